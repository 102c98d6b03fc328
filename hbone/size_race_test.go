//go:build race

package hbone

// largeTransfer is smaller under the race detector, which slows copying
// tenfold; the full 256 MiB runs without it.
const largeTransfer = 32 << 20
