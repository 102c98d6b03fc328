package spire

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// Registration is the SPIRE server entry of one mesh workload identity on
// one node. The mesh owns the entries with a given (ID, Parent): Apply
// makes one of them match, Delete removes them all.
type Registration struct {
	// ID is the SPIFFE ID the workload gets.
	ID spiffeid.ID
	// Parent is the SPIFFE ID of the node's SPIRE agent, whose delegates
	// (the node's ztunnel) may fetch the SVID.
	Parent spiffeid.ID
	// Selectors the workload is named by (all must match).
	Selectors []Selector
	// X509SVIDTTL is the lifetime of the SVIDs; 0 uses the server's
	// default_x509_svid_ttl. Whole seconds.
	X509SVIDTTL time.Duration
	// FederatesWith are trust domains whose bundles the workload gets, to
	// accept peers from them.
	FederatesWith []spiffeid.TrustDomain
}

// KubernetesRegistration is the entry of a service account's pods on the
// node whose agent is parent: spiffe://<td>/ns/<ns>/sa/<sa>, selectors
// k8s:ns:<ns> and k8s:sa:<sa>.
func KubernetesRegistration(td spiffeid.TrustDomain, namespace, serviceAccount string, parent spiffeid.ID) (Registration, error) {
	id, err := KubernetesID(td, namespace, serviceAccount)
	if err != nil {
		return Registration{}, err
	}
	return Registration{ID: id, Parent: parent, Selectors: KubernetesSelectors(namespace, serviceAccount)}, nil
}

func (r Registration) validate() error {
	switch {
	case r.ID.IsZero() || r.Parent.IsZero():
		return fmt.Errorf("%w: registration needs a SPIFFE ID (%q) and a parent (%q)", ErrInvalidWorkload, r.ID, r.Parent)
	case len(r.Selectors) == 0:
		return fmt.Errorf("%w: registration of %s has no selectors", ErrInvalidWorkload, r.ID)
	case r.X509SVIDTTL < 0 || r.X509SVIDTTL > math.MaxInt32*time.Second || r.X509SVIDTTL%time.Second != 0:
		return fmt.Errorf("%w: registration of %s: X509SVIDTTL %s is not a whole number of seconds in range", ErrInvalidWorkload, r.ID, r.X509SVIDTTL)
	}
	return validateSelectors(r.Selectors)
}

// Change is what Apply did.
type Change string

// What Apply did to the server's entries.
const (
	Created   Change = "created"
	Updated   Change = "updated"
	Unchanged Change = "unchanged"
)

// Registrar manages mesh workload entries through the SPIRE server's entry
// API, on the server's local socket (socket_path), where a local caller is
// an admin. Safe for concurrent use.
type Registrar struct {
	socket  string
	conn    *grpc.ClientConn
	entries entryv1.EntryClient
}

// DialRegistrar prepares a registrar for the SPIRE server API socket at
// path (a file path, or a unix:// URL); it connects on first use.
func DialRegistrar(socket string) (*Registrar, error) {
	abs, err := filepath.Abs(strings.TrimPrefix(socket, "unix://"))
	if err != nil {
		return nil, fmt.Errorf("spire: server socket %q: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire: server socket %q: %w", socket, err)
	}
	return &Registrar{socket: abs, conn: conn, entries: entryv1.NewEntryClient(conn)}, nil
}

// Close closes the connection to the server.
func (r *Registrar) Close() error { return r.conn.Close() }

// Apply makes the server hold reg: it creates the entry, or updates the
// entry with reg's (ID, Parent) to reg's selectors, TTL and federation, or
// leaves it alone when it already matches. Concurrent Applies of the same
// registration are safe. It returns the entry's ID and what it did.
func (r *Registrar) Apply(ctx context.Context, reg Registration) (string, Change, error) {
	if err := reg.validate(); err != nil {
		return "", "", err
	}
	existing, err := r.list(ctx, reg.ID, reg.Parent)
	if err != nil {
		return "", "", err
	}
	if len(existing) == 0 {
		created, err := r.create(ctx, reg)
		if err != nil || created != nil {
			return created.GetId(), Created, err
		}
		// Someone created it meanwhile: look again and converge.
		if existing, err = r.list(ctx, reg.ID, reg.Parent); err != nil {
			return "", "", err
		}
	}
	current := pickEntry(existing, reg)
	if entryMatches(current, reg) {
		return current.GetId(), Unchanged, nil
	}
	return current.GetId(), Updated, r.update(ctx, current.GetId(), reg)
}

// Delete removes every entry with SPIFFE ID id and parent parent, and
// returns how many there were; none is not an error.
func (r *Registrar) Delete(ctx context.Context, id, parent spiffeid.ID) (int, error) {
	existing, err := r.list(ctx, id, parent)
	if err != nil || len(existing) == 0 {
		return 0, err
	}
	ids := make([]string, len(existing))
	for i, e := range existing {
		ids[i] = e.GetId()
	}
	resp, err := r.entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
	if err != nil {
		return 0, serverError(r.socket, "delete entries of "+id.String(), err)
	}
	for _, res := range resp.GetResults() {
		if c := codes.Code(res.GetStatus().GetCode()); c != codes.OK && c != codes.NotFound {
			return 0, fmt.Errorf("%w: delete entry %s of %s: %s", ErrServer, res.GetId(), id, res.GetStatus().GetMessage())
		}
	}
	return len(ids), nil
}

// Lookup returns the registrations the server holds with SPIFFE ID id and
// parent parent: after Apply, one of them is the one applied.
func (r *Registrar) Lookup(ctx context.Context, id, parent spiffeid.ID) ([]Registration, error) {
	entries, err := r.list(ctx, id, parent)
	if err != nil {
		return nil, err
	}
	regs := make([]Registration, len(entries))
	for i, e := range entries {
		if regs[i], err = entryFromProto(e); err != nil {
			return nil, fmt.Errorf("%w: entry %s: %w", ErrServer, e.GetId(), err)
		}
	}
	return regs, nil
}

// list returns the entries with SPIFFE ID id and parent parent.
func (r *Registrar) list(ctx context.Context, id, parent spiffeid.ID) ([]*types.Entry, error) {
	req := &entryv1.ListEntriesRequest{Filter: &entryv1.ListEntriesRequest_Filter{
		BySpiffeId: idToProto(id), ByParentId: idToProto(parent),
	}}
	var out []*types.Entry
	for {
		resp, err := r.entries.ListEntries(ctx, req)
		if err != nil {
			return nil, serverError(r.socket, "list entries of "+id.String(), err)
		}
		out = append(out, resp.GetEntries()...)
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			return out, nil
		}
	}
}

// create creates reg's entry; it returns nil, nil when a similar entry
// already exists (a concurrent Apply won).
func (r *Registrar) create(ctx context.Context, reg Registration) (*types.Entry, error) {
	resp, err := r.entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{entryToProto(reg)}})
	if err != nil {
		return nil, serverError(r.socket, "create entry for "+reg.ID.String(), err)
	}
	res := resp.GetResults()[0]
	switch codes.Code(res.GetStatus().GetCode()) {
	case codes.OK:
		return res.GetEntry(), nil
	case codes.AlreadyExists:
		return nil, nil
	}
	return nil, fmt.Errorf("%w: create entry for %s: %s", ErrServer, reg.ID, res.GetStatus().GetMessage())
}

func (r *Registrar) update(ctx context.Context, entryID string, reg Registration) error {
	e := entryToProto(reg)
	e.Id = entryID
	resp, err := r.entries.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
		Entries:   []*types.Entry{e},
		InputMask: &types.EntryMask{Selectors: true, X509SvidTtl: true, FederatesWith: true},
	})
	if err != nil {
		return serverError(r.socket, "update entry "+entryID+" of "+reg.ID.String(), err)
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		return fmt.Errorf("%w: update entry %s of %s: %s", ErrServer, entryID, reg.ID, st.GetMessage())
	}
	return nil
}

// pickEntry prefers an entry that already has reg's selectors.
func pickEntry(entries []*types.Entry, reg Registration) *types.Entry {
	for _, e := range entries {
		if sameSelectors(selectorsFromProto(e.GetSelectors()), reg.Selectors) {
			return e
		}
	}
	return entries[0]
}

func entryMatches(e *types.Entry, reg Registration) bool {
	return sameSelectors(selectorsFromProto(e.GetSelectors()), reg.Selectors) &&
		time.Duration(e.GetX509SvidTtl())*time.Second == reg.X509SVIDTTL &&
		sameStrings(e.GetFederatesWith(), trustDomainNames(reg.FederatesWith))
}

func sameSelectors(a, b []Selector) bool {
	return formatSelectors(a) == formatSelectors(b)
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
