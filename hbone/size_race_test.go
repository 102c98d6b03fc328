//go:build race

package hbone

// largeTransfer is smaller under the race detector, which slows copying
// tenfold; the full 256 MiB runs without it, which make test does too
// (FULL_SIZE in the Makefile).
const largeTransfer = 32 << 20
