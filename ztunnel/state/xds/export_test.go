package xds

import "slices"

// Demanded are the address keys the client subscribes to on demand and
// has had answered, each list sorted: those standing for a workload or a
// service, and the misses.
func (c *Client) Demanded() (found, misses []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, d := range c.demands {
		switch {
		case !d.settled():
		case d.found:
			found = append(found, key)
		default:
			misses = append(misses, key)
		}
	}
	slices.Sort(found)
	slices.Sort(misses)
	return found, misses
}
