package analytics

import "time"

// Observe sets the function called after each batch the Watcher processed
// (nil: none).
func Observe(fn func(events, rows int, apply, insert time.Duration)) {
	if fn == nil {
		observe.Store(nil)
		return
	}
	observe.Store(&fn)
}
