package xds

import "errors"

// ErrNotProxy is the error of a client that is neither a ztunnel nor a
// waypoint of the mesh: the stream refuses it with PERMISSION_DENIED, the
// bundle server with 403.
var ErrNotProxy = errors.New("xds: not a proxy of the mesh")
