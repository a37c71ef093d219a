//go:build !race

package clickhouse

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
