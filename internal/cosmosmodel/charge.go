package cosmosmodel

import "math"

// The request charges, in RU, of the model. They follow Azure Cosmos DB's
// published figures for the NoSQL API with the default indexing policy and
// session consistency:
//
//   - a point read of a 1 KB item costs 1 RU and one of a 100 KB item 10 RU
//     ("Optimize request cost in Azure Cosmos DB", point reads table);
//   - a 1 KB write costs about 5 RU, a 4 KB one about 7 RU, a 100 KB one
//     about 50 RU (the capacity tables of "Optimize provisioned throughput
//     cost" and "Azure Cosmos DB as a key value store"); a small write is
//     reported as 5.71 RU by the service.
//
// Both are straight lines through those points, in KB of the JSON document
// as the client sent it (or as stored, for reads and deletes), with documents
// under 1 KB charged as 1 KB:
//
//	read  = 1    + 0.10 × (KB − 1)      1 KB: 1.00   4 KB: 1.30   100 KB: 10.90
//	write = 5.71 + 0.44 × (KB − 1)      1 KB: 5.71   4 KB: 7.03   100 KB: 49.27
//
// Creates, upserts, replaces and deletes are writes. A query costs
// QueryBaseCharge plus 0.01 RU per document it scans and 0.1 RU per KB it
// returns. A request that fails (404, 409, 400, ...) costs FailedCharge;
// a throttled one (429) costs nothing. A transactional batch costs the sum of
// its operations. Charges are rounded to two decimals, as the service
// reports them.
const (
	// ReadBaseCharge is the charge of a point read of up to 1 KB.
	ReadBaseCharge = 1.0
	// ReadChargePerKB is what each further KB adds to a point read.
	ReadChargePerKB = 0.10
	// WriteBaseCharge is the charge of a write of up to 1 KB.
	WriteBaseCharge = 5.71
	// WriteChargePerKB is what each further KB adds to a write.
	WriteChargePerKB = 0.44
	// QueryBaseCharge is the fixed part of a query's charge.
	QueryBaseCharge = 2.83
	// FailedCharge is the charge of a request that failed with a client
	// error other than 429 (not found, conflict, bad request).
	FailedCharge = 1.0
	// MetadataCharge is the charge reported for requests on the account,
	// databases and containers. Like Azure's, they do not draw on the
	// provisioned throughput: they are neither throttled nor counted as RU
	// served.
	MetadataCharge = 1.0
)

// ReadCharge returns the charge of a point read of a document of size bytes.
func ReadCharge(size int) float64 {
	return round2(ReadBaseCharge + ReadChargePerKB*(kb(size)-1))
}

// WriteCharge returns the charge of creating, upserting, replacing or
// deleting a document of size bytes.
func WriteCharge(size int) float64 {
	return round2(WriteBaseCharge + WriteChargePerKB*(kb(size)-1))
}

// QueryCharge returns the charge of a query (or of one page of it) that
// scanned scanned documents and returned returnedBytes bytes of results.
func QueryCharge(scanned, returnedBytes int) float64 {
	return round2(QueryBaseCharge + 0.01*float64(scanned) + 0.1*float64(returnedBytes)/1024)
}

// kb returns size in KB, at least 1.
func kb(size int) float64 {
	return math.Max(1, float64(size)/1024)
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
