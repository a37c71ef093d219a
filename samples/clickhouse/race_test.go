//go:build race

package clickhouse

// raceEnabled reports whether the race detector is on: it slows the client
// side (encoding rows, the Batcher) many times over, not the server.
const raceEnabled = true
