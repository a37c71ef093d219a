package analytics_test

import (
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher/samples/analytics"
)

func createTableIn(t *testing.T, conn driver.Conn, table string) error {
	return analytics.CreateTable(t.Context(), conn, table)
}
