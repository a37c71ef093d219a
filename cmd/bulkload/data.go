package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/ratebatch/batcher/samples/cosmos"
)

// generate returns n documents of about size bytes of JSON, with ids
// item-000000..., spread over partitions partition key values under the
// property pkProp. The content is the same for the same arguments.
func generate(n, size, partitions int, pkProp string) []cosmos.Item {
	rng := rand.New(rand.NewPCG(1, 2))
	const letters = "abcdefghijklmnopqrstuvwxyz"
	items := make([]cosmos.Item, n)
	for i := range items {
		id := fmt.Sprintf("item-%06d", i)
		pk := fmt.Sprintf("customer-%d", i%partitions)
		doc := map[string]any{"id": id, pkProp: pk, "seq": i, "price": rng.IntN(100000), "note": ""}
		b, _ := json.Marshal(doc)
		pad := make([]byte, max(size-len(b), 0))
		for j := range pad {
			pad[j] = letters[rng.IntN(len(letters))]
		}
		doc["note"] = string(pad)
		b, _ = json.Marshal(doc)
		items[i] = cosmos.Item{ID: id, PartitionKey: pk, Body: b}
	}
	return items
}

// readLines reads documents from JSON lines: one object a line, each with a
// string id and a string pkProp; blank lines are skipped. Errors name the
// line.
func readLines(r io.Reader, name, pkProp string) ([]cosmos.Item, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxDocSize+1024)
	var items []cosmos.Item
	seen := map[string]int{}
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal([]byte(text), &doc); err != nil {
			return nil, fmt.Errorf("%s:%d: not a JSON object: %v", name, line, err)
		}
		var id, pk string
		if err := json.Unmarshal(doc["id"], &id); err != nil || id == "" {
			return nil, fmt.Errorf("%s:%d: the document has no string \"id\"", name, line)
		}
		if err := json.Unmarshal(doc[pkProp], &pk); err != nil {
			return nil, fmt.Errorf("%s:%d: the document has no string %q (the partition key; see -partition-key)", name, line, pkProp)
		}
		if prev, ok := seen[pk+"\x00"+id]; ok {
			return nil, fmt.Errorf("%s:%d: the id %q with partition key %q is on line %d too", name, line, id, pk, prev)
		}
		seen[pk+"\x00"+id] = line
		items = append(items, cosmos.Item{ID: id, PartitionKey: pk, Body: []byte(text)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%s: no documents", name)
	}
	return items, nil
}

// loadItems returns the items the config asks for.
func loadItems(c config, stdin io.Reader) ([]cosmos.Item, error) {
	prop := strings.TrimPrefix(c.pkPath, "/")
	switch c.input {
	case "":
		return generate(c.items, c.size, c.partitions, prop), nil
	case "-":
		return readLines(stdin, "standard input", prop)
	}
	f, err := os.Open(c.input)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLines(f, c.input, prop)
}
