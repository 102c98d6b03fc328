package spire

import (
	"context"
	"errors"
	"fmt"
	"strings"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
)

// This file is the registrar's side for a caller that owns a set of
// entries, told from everyone else's by their entry IDs: it chooses each
// entry's ID (with a prefix of its own, as spire-controller-manager's
// entryIDPrefix), lists only the entries under its prefix, and changes
// and deletes entries by ID, so that it never touches an entry it did
// not create.

// Entry is a server entry under the entry ID its owner chose.
type Entry struct {
	// EntryID is the server's ID of the entry: the owner's prefix and a
	// name of its own.
	EntryID string
	Registration
}

// batchSize bounds the entries of one batch request.
const batchSize = 50

// Entries lists the server's entries whose entry ID begins with prefix.
func (r *Registrar) Entries(ctx context.Context, prefix string) ([]Entry, error) {
	if prefix == "" {
		return nil, fmt.Errorf("%w: Entries needs the prefix of the entries it owns", ErrInvalidWorkload)
	}
	req := &entryv1.ListEntriesRequest{PageSize: 1000}
	var out []Entry
	for {
		resp, err := r.entries.ListEntries(ctx, req)
		if err != nil {
			return nil, serverError(r.socket, "list entries", err)
		}
		for _, e := range resp.GetEntries() {
			if !strings.HasPrefix(e.GetId(), prefix) {
				continue
			}
			reg, err := entryFromProto(e)
			if err != nil {
				return nil, fmt.Errorf("%w: entry %s: %w", ErrServer, e.GetId(), err)
			}
			out = append(out, Entry{EntryID: e.GetId(), Registration: reg})
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			return out, nil
		}
	}
}

// CreateEntries creates each entry under its EntryID, and returns the
// entry IDs of those the server refused as existing: an entry of that ID,
// or another entry with the same SPIFFE ID, parent and selectors (which
// is not the caller's to change), is there already.
func (r *Registrar) CreateEntries(ctx context.Context, entries []Entry) ([]string, error) {
	var existing []string
	err := batches(entries, func(batch []Entry) error {
		req := &entryv1.BatchCreateEntryRequest{}
		for _, e := range batch {
			if err := e.validate(); err != nil {
				return err
			}
			req.Entries = append(req.Entries, e.proto())
		}
		resp, err := r.entries.BatchCreateEntry(ctx, req)
		if err != nil {
			return serverError(r.socket, "create entries", err)
		}
		var errs []error
		for i, res := range resp.GetResults() {
			switch codes.Code(res.GetStatus().GetCode()) {
			case codes.OK:
			case codes.AlreadyExists:
				existing = append(existing, batch[i].EntryID)
			default:
				errs = append(errs, fmt.Errorf("%w: create entry %s for %s: %s", ErrServer, batch[i].EntryID, batch[i].ID, res.GetStatus().GetMessage()))
			}
		}
		return errors.Join(errs...)
	})
	return existing, err
}

// UpdateEntries sets the selectors, SVID lifetime and federation of the
// entries with each EntryID to the entry's.
func (r *Registrar) UpdateEntries(ctx context.Context, entries []Entry) error {
	return batches(entries, func(batch []Entry) error {
		req := &entryv1.BatchUpdateEntryRequest{InputMask: &types.EntryMask{Selectors: true, X509SvidTtl: true, FederatesWith: true}}
		for _, e := range batch {
			if err := e.validate(); err != nil {
				return err
			}
			req.Entries = append(req.Entries, e.proto())
		}
		resp, err := r.entries.BatchUpdateEntry(ctx, req)
		if err != nil {
			return serverError(r.socket, "update entries", err)
		}
		var errs []error
		for i, res := range resp.GetResults() {
			if c := codes.Code(res.GetStatus().GetCode()); c != codes.OK {
				errs = append(errs, fmt.Errorf("%w: update entry %s of %s: %s", ErrServer, batch[i].EntryID, batch[i].ID, res.GetStatus().GetMessage()))
			}
		}
		return errors.Join(errs...)
	})
}

// DeleteEntries deletes the entries with these entry IDs; one already
// gone is not an error.
func (r *Registrar) DeleteEntries(ctx context.Context, entryIDs []string) error {
	return batches(entryIDs, func(batch []string) error {
		resp, err := r.entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: batch})
		if err != nil {
			return serverError(r.socket, "delete entries", err)
		}
		var errs []error
		for _, res := range resp.GetResults() {
			if c := codes.Code(res.GetStatus().GetCode()); c != codes.OK && c != codes.NotFound {
				errs = append(errs, fmt.Errorf("%w: delete entry %s: %s", ErrServer, res.GetId(), res.GetStatus().GetMessage()))
			}
		}
		return errors.Join(errs...)
	})
}

func (e Entry) validate() error {
	if e.EntryID == "" {
		return fmt.Errorf("%w: the entry of %s has no entry ID", ErrInvalidWorkload, e.ID)
	}
	return e.Registration.validate()
}

func (e Entry) proto() *types.Entry {
	p := entryToProto(e.Registration)
	p.Id = e.EntryID
	return p
}

// batches calls do with successive batches of items, and joins the
// errors: one refused batch does not keep the others from the server.
func batches[T any](items []T, do func([]T) error) error {
	var errs []error
	for len(items) > 0 {
		n := min(len(items), batchSize)
		if err := do(items[:n]); err != nil {
			errs = append(errs, err)
		}
		items = items[n:]
	}
	return errors.Join(errs...)
}
