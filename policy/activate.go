package policy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	meshrego "github.com/regomesh/regomesh/rego"
)

// activation is a compiled bundle set: the compiler (library + every
// bundle's modules) and the store holding every bundle's data.
//
// Invariants: compiler compiled without errors; store is committed and never
// written again, so data (read from it in the activating transaction) is
// exactly what queries see; revisions has one entry per bundle.
type activation struct {
	compiler *ast.Compiler
	store    storage.Store
	// data is the merged base documents (bundle data, and OPA's
	// data.system.bundles manifests), for reading constants without a
	// transaction. It must not be modified.
	data map[string]any
	// revisions maps bundle name -> manifest revision.
	revisions map[string]string
	// mask is the set's data.system.log.mask, nil when it defines none.
	mask *logMask
}

// activate compiles the library modules and the bundles together, as OPA
// activates several bundles: OPA's bundle.Activate enforces that roots do
// not overlap, and the compiler checks the whole set. Errors wrap ErrBundle
// and name the bundle and file:line when known.
func activate(ctx context.Context, bundles []*Bundle, library map[string]*ast.Module) (*activation, error) {
	named, err := bundlesByName(bundles, library)
	if err != nil {
		return nil, err
	}
	store := inmem.New()
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return nil, fmt.Errorf("policy: activate: open store transaction: %w", err)
	}
	a, err := activateIn(ctx, store, txn, named, library)
	if err != nil {
		store.Abort(ctx, txn)
		return nil, activationError(bundles, err)
	}
	if err := store.Commit(ctx, txn); err != nil {
		return nil, fmt.Errorf("policy: activate: commit store: %w", err)
	}
	a.revisions = revisionsByName(bundles)
	if a.mask, err = prepareLogMask(ctx, a); err != nil {
		return nil, activationError(bundles, err)
	}
	return a, nil
}

// bundlesByName keys bundles by Name for bundle.Activate, after checking that
// names are unique and that no bundle touches the library.
func bundlesByName(bundles []*Bundle, library map[string]*ast.Module) (map[string]*bundle.Bundle, error) {
	named := make(map[string]*bundle.Bundle, len(bundles))
	for i, b := range bundles {
		if b == nil || b.raw == nil || b.Name == "" {
			return nil, fmt.Errorf("%w: bundle %d of the set is empty or unnamed: read bundles with ReadBundle", ErrBundle, i)
		}
		if _, dup := named[b.Name]; dup {
			return nil, &bundleError{names: []string{b.Name}, detail: "two bundles of the set have this name",
				hint: "give every bundle a unique name"}
		}
		if err := b.checkLibraryOwnership(); err != nil {
			return nil, err
		}
		if err := b.checkLibraryModuleNames(library); err != nil {
			return nil, err
		}
		raw, err := b.parsedRaw()
		if err != nil {
			return nil, err
		}
		named[b.Name] = raw
	}
	return named, nil
}

// checkLibraryModuleNames rejects a bundle whose module would replace a
// library module: bundle.Activate keys modules by bundle name + file, and a
// bundle module of the same key silently wins.
func (b *Bundle) checkLibraryModuleNames(library map[string]*ast.Module) error {
	for key := range b.raw.ParsedModules(b.Name) {
		if _, ok := library[key]; ok {
			return &bundleError{names: []string{b.Name}, detail: fmt.Sprintf("module %s has the name of a library module", key),
				hint: "rename the bundle"}
		}
	}
	return nil
}

// activateIn activates the bundles into a fresh compiler and the store's
// open transaction, and reads back the merged data.
func activateIn(ctx context.Context, store storage.Store, txn storage.Transaction, named map[string]*bundle.Bundle, library map[string]*ast.Module) (*activation, error) {
	compiler := ast.NewCompiler()
	err := bundle.Activate(&bundle.ActivateOpts{
		Ctx:           ctx,
		Store:         store,
		Txn:           txn,
		Compiler:      compiler,
		Metrics:       metrics.New(),
		Bundles:       named,
		ExtraModules:  library,
		ParserOptions: ast.ParserOptions{RegoVersion: ast.RegoV1},
	})
	if err != nil {
		return nil, err
	}
	data, err := readActivatedData(ctx, store, txn)
	if err != nil {
		return nil, err
	}
	return &activation{compiler: compiler, store: store, data: data}, nil
}

// readActivatedData reads the whole base-document tree in txn.
func readActivatedData(ctx context.Context, store storage.Store, txn storage.Transaction) (map[string]any, error) {
	doc, err := store.Read(ctx, txn, storage.RootPath)
	if err != nil {
		return nil, fmt.Errorf("read activated data: %w", err)
	}
	data, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("read activated data: root document is %T, not an object", doc)
	}
	return data, nil
}

// revisionsByName maps each bundle's name to its manifest revision.
func revisionsByName(bundles []*Bundle) map[string]string {
	revs := make(map[string]string, len(bundles))
	for _, b := range bundles {
		revs[b.Name] = b.Revision
	}
	return revs
}

// activationError explains a failed activation. Compile errors name the
// bundle and file:line of each error; other errors (overlapping roots, data
// colliding with rules) name every bundle of the set, as OPA's text does.
func activationError(bundles []*Bundle, err error) error {
	owners := moduleOwners(bundles)
	named := map[string]bool{}
	fileName := func(file string) string {
		if o := owners[file]; len(o) == 1 {
			named[o[0].bundle] = true
			return o[0].file
		}
		return file
	}
	detail, isAST := describeASTErrors(err, fileName)
	if !isAST {
		return &bundleError{names: bundleNames(bundles), cause: err,
			hint: "check the bundles' .manifest roots: roots of different bundles must not overlap, and a bundle without roots owns everything so it must be alone"}
	}
	names := slices.Sorted(maps.Keys(named))
	if len(names) == 0 {
		names = bundleNames(bundles)
	}
	return &bundleError{names: names, detail: detail, cause: err, hint: astHint(err)}
}

// astHint says what to fix for compile errors: the Rego at a location, or
// (for OPA's path-conflict errors, which have none) rules and data that
// define the same document.
func astHint(err error) string {
	var errs ast.Errors
	if errors.As(err, &errs) && slices.ContainsFunc(errs, func(e *ast.Error) bool { return e.Location != nil }) {
		return "fix the Rego at the file and line shown"
	}
	return "check that no rule and no data file define the same document"
}

// libraryPath is the document the library owns, as path segments.
var libraryPath = strings.Split(meshrego.Root, "/")

// libraryHint says where user policies go instead.
var libraryHint = fmt.Sprintf("package %s belongs to regomesh's library; put policies under mesh.policies.<owner>.<name>",
	strings.Join(libraryPath, "."))

// checkLibraryOwnership rejects a bundle that defines packages, rules or data
// in the library's document, or claims a root inside it. Roots that merely
// contain it (the default [""], or "mesh") are allowed: they say nothing
// about mesh.authz unless the bundle puts something there.
func (b *Bundle) checkLibraryOwnership() error {
	for _, check := range []func() string{b.libraryRoot, b.libraryModule, b.libraryData} {
		if detail := check(); detail != "" {
			return &bundleError{names: []string{b.Name}, detail: detail, hint: libraryHint}
		}
	}
	return nil
}

func (b *Bundle) libraryRoot() string {
	for _, root := range b.Roots {
		if segmentsHavePrefix(strings.Split(strings.Trim(root, "/"), "/"), libraryPath) {
			return fmt.Sprintf("declares .manifest root %q", root)
		}
	}
	return ""
}

func (b *Bundle) libraryModule() string {
	for _, mf := range b.raw.Modules {
		m := mf.Parsed
		if m == nil {
			continue // read by fastParse, and checked then (ReadBundle)
		}
		if segmentsHavePrefix(dataRefSegments(m.Package.Path), libraryPath) {
			return fmt.Sprintf("%s:%d: declares %s", bundleFileName(b.Name, mf), m.Package.Location.Row, m.Package)
		}
		for _, rule := range m.Rules {
			if segmentsHavePrefix(dataRefSegments(rule.Ref()), libraryPath) {
				return fmt.Sprintf("%s:%d: defines %s", bundleFileName(b.Name, mf), rule.Location.Row, rule.Ref())
			}
		}
	}
	return ""
}

func (b *Bundle) libraryData() string {
	var doc any = b.raw.Data
	for _, key := range libraryPath {
		obj, ok := doc.(map[string]any)
		if !ok {
			return ""
		}
		if doc, ok = obj[key]; !ok {
			return ""
		}
	}
	return "has data at " + meshrego.Root
}

// dataRefSegments is the constant prefix of a data ref (data.a.b[x] -> a, b).
func dataRefSegments(ref ast.Ref) []string {
	var segments []string
	for _, term := range ref[1:] {
		s, ok := term.Value.(ast.String)
		if !ok {
			break
		}
		segments = append(segments, string(s))
	}
	return segments
}

func segmentsHavePrefix(segments, prefix []string) bool {
	return len(segments) >= len(prefix) && slices.Equal(segments[:len(prefix)], prefix)
}

// moduleOwner is a bundle holding a module, and the module's file as
// messages name it.
type moduleOwner struct {
	bundle, file string
}

// moduleOwners maps module file names, as OPA's errors carry them, to the
// bundles holding them. Archive bundles' names are relative to the archive,
// so two archives may hold the same name.
func moduleOwners(bundles []*Bundle) map[string][]moduleOwner {
	owners := map[string][]moduleOwner{}
	for _, b := range bundles {
		for _, mf := range b.raw.Modules {
			owners[mf.Path] = append(owners[mf.Path], moduleOwner{bundle: b.Name, file: bundleFileName(b.Name, mf)})
		}
	}
	return owners
}

// bundleNames lists the names of bundles, sorted, for messages and logs;
// nil entries are skipped.
func bundleNames(bundles []*Bundle) []string {
	names := make([]string, 0, len(bundles))
	for _, b := range bundles {
		if b != nil {
			names = append(names, b.Name)
		}
	}
	slices.Sort(names)
	return names
}
