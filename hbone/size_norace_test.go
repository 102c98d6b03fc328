//go:build !race

package hbone

// largeTransfer is how many bytes TestLargeTransferBothWays sends each way.
const largeTransfer = 256 << 20
