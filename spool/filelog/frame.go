package filelog

import (
	"encoding/binary"
	"hash/crc32"
)

// A frame is one record on disk: its length (4 bytes, little endian), a
// CRC-32C of the length and the data (4 bytes), and the data. The checksum
// covers the length, so that a run of zero bytes (a file extended but never
// written, after a crash) is not read as empty records.
const frameHeader = 8

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(hdr, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(hdr[:4], castagnoli), castagnoli, data)
}

// appendFrame appends data's frame to dst.
func appendFrame(dst, data []byte) []byte {
	var hdr [frameHeader]byte
	binary.LittleEndian.PutUint32(hdr[:4], uint32(len(data)))
	binary.LittleEndian.PutUint32(hdr[4:], checksum(hdr[:], data))
	dst = append(dst, hdr[:]...)
	return append(dst, data...)
}

// parseFrame reads the frame at the start of b. It returns the data and the
// frame's size; size 0 with ok true means b holds only part of a frame
// (that may be whole once more is read); ok false means the frame is bad:
// its length is over max or its checksum does not match.
func parseFrame(b []byte, max int) (data []byte, size int, ok bool) {
	if len(b) < frameHeader {
		return nil, 0, true
	}
	n := binary.LittleEndian.Uint32(b[:4])
	if int64(n) > int64(max) {
		return nil, 0, false
	}
	end := frameHeader + int(n)
	if len(b) < end {
		return nil, 0, true
	}
	if checksum(b[:frameHeader], b[frameHeader:end]) != binary.LittleEndian.Uint32(b[4:8]) {
		return nil, 0, false
	}
	return b[frameHeader:end], end, true
}
