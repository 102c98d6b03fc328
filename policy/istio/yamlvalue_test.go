package istio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	apiv1beta1 "istio.io/api/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// FuzzDecodeFastPath holds Decode's one-parse path equal to the way
// kubectl reads YAML (sigs.k8s.io/yaml), which Decode took alone before:
// wherever jsonValue reads a document, it reads the value the slow path
// reads, and the document's first line; and Decode returns the same
// resources, notes, errors and field positions either way.
func FuzzDecodeFastPath(f *testing.F) {
	for _, seed := range fastPathSeeds(f) {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, doc := range splitDocuments(data) {
			checkFastValue(t, doc)
		}
		checkFastDecode(t, data)
	})
}

// TestDecodeFastPath reads the seeds as FuzzDecodeFastPath does, and
// checks that the fast path took the documents it is for: the goldens',
// the cases', and issue #15's shape.
func TestDecodeFastPath(t *testing.T) {
	fast, quick, all, policies, converted := 0, 0, 0, 0, 0
	for _, seed := range fastPathSeeds(t) {
		for _, doc := range splitDocuments([]byte(seed)) {
			all++
			if checkFastValue(t, doc) {
				fast++
			}
			v, _, ok := quickValue(doc.text)
			if ok {
				quick++
			}
			if m, _ := v.(map[string]any); m["kind"] == "AuthorizationPolicy" {
				policies++
				if meta, ok := objectMeta(m); ok {
					if _, _, ok := convertMap(meta, m["spec"], &Policy{}); ok {
						converted++
					}
				}
			}
		}
		checkFastDecode(t, []byte(seed))
	}
	t.Logf("of %d documents, the fast path read %d, quickValue %d; of %d AuthorizationPolicies, convertMap converted %d", all, fast, quick, policies, converted)
	if fast < all*3/4 || quick < all/2 || converted < policies/2 {
		t.Errorf("of %d documents, the fast path read %d, quickValue %d; of %d AuthorizationPolicies, convertMap converted %d: want most of them", all, fast, quick, policies, converted)
	}
	const denies = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p-1, namespace: ns-1}\nspec:\n" +
		"  selector: {matchLabels: {app: app-1}}\n  action: DENY\n  rules:\n  - from:\n" +
		"    - source: {principals: [\"cluster.local/ns/src-1/sa/sa-1\", \"cluster.local/ns/src-1/sa/batch\"], notNamespaces: [\"trusted-1\"], ipBlocks: [\"10.1.0.0/16\"]}\n" +
		"    to:\n    - operation: {ports: [\"8001\", \"9443\"]}\n"
	if _, _, ok := quickValue([]byte(denies)); !ok {
		t.Errorf("quickValue does not read issue #15's policy:\n%s", denies)
	}
}

func TestPlainValue(t *testing.T) {
	tests := []struct {
		in   string
		want any // nil with ok false: the slow path decides
		ok   bool
	}{
		{"DENY", "DENY", true},
		{"cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", true},
		{"10.0.0.0/16", "10.0.0.0/16", true},
		{"8080", float64(8080), true},
		{"-3", float64(-3), true},
		{"0x1F", float64(31), true},
		{"0777", float64(511), true},
		{"1_000", float64(1000), true},
		{"yes", true, true},
		{"Off", false, true},
		{"~", nil, true},
		{"", nil, true},
		{"nope", "nope", true},
		{".5", nil, false},
		{"1e3", nil, false},
		{".inf", nil, false},
		{"2024-01-02", nil, false},
		{"18446744073709551615", nil, false},
		{"9007199254740993", nil, false},
		{"-0b101", float64(-5), true},
		{"+.inf", nil, false},
		{"-", "-", true},
		{"1.2.3", "1.2.3", true},
	}
	for _, tt := range tests {
		got, ok := plainValue(tt.in)
		if ok != tt.ok || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("plainValue(%q) = %#v, %v; want %#v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// checkFastValue compares the fast path's reading of doc with the slow
// path's, where the fast path reads it, and says whether it did.
func checkFastValue(t *testing.T, doc document) bool {
	t.Helper()
	quick, quickLine, quickOK := quickValue(doc.text)
	var root yamlv3.Node
	if yamlv3.Unmarshal(doc.text, &root) != nil {
		if quickOK {
			t.Fatalf("quickValue reads a document yaml.v3 refuses:\n%s", doc.text)
		}
		return false
	}
	fast, ok := jsonValue(&root)
	ok = ok && !bytes.ContainsRune(doc.text, '!') // as treeValue
	treeOK := ok
	if quickOK && !ok {
		// yaml.v3 may read it otherwise (YAML 1.2): compare with the slow path.
		fast, ok = quick, true
	}
	if !ok {
		return false
	}
	if quickOK && !reflect.DeepEqual(quick, fast) {
		t.Fatalf("quickValue: %#v\njsonValue: %#v\nof:\n%s", quick, fast, doc.text)
	}
	js, err := yaml.YAMLToJSONStrict(doc.text)
	if err != nil {
		t.Fatalf("the fast path reads a document kubectl refuses (%v):\n%s", err, doc.text)
	}
	var slow any
	if err := json.Unmarshal(js, &slow); err != nil {
		t.Fatalf("the fast path reads a document kubectl refuses (%v):\n%s", err, doc.text)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("fast path: %#v\nslow path: %#v\nof:\n%s", fast, slow, doc.text)
	}
	checkFill(t, slow, doc.text)
	if fast == nil {
		return true
	}
	want := minLine(fieldLines(doc.text, doc.line), doc.line)
	if got := documentLine(&root, doc.line); treeOK && got != want {
		t.Fatalf("first line: fast path %d, slow path %d, of:\n%s", got, want, doc.text)
	}
	if got := doc.line + quickLine - 1; quickOK && got != want {
		t.Fatalf("first line: quickValue %d, slow path %d, of:\n%s", got, want, doc.text)
	}
	return true
}

// checkFastDecode decodes data on both paths and compares everything
// Decode returns, and the position of every field of every resource.
func checkFastDecode(t *testing.T, data []byte) {
	t.Helper()
	decode := func(fast bool) (*Resources, []Note, error) {
		s := readStream(bytes.NewReader(data), "f.yaml", 0)
		decodeStreams([]*stream{s}, fast)
		return s.result()
	}
	fastRes, fastNotes, fastErr := decode(true)
	slowRes, slowNotes, slowErr := decode(false)
	if fmt.Sprint(fastErr) != fmt.Sprint(slowErr) {
		t.Fatalf("errors: fast path:\n%v\nslow path:\n%v\nof:\n%s", fastErr, slowErr, data)
	}
	if !reflect.DeepEqual(fastNotes, slowNotes) {
		t.Fatalf("notes: fast path %v, slow path %v, of:\n%s", fastNotes, slowNotes, data)
	}
	if len(fastRes.AuthorizationPolicies) != len(slowRes.AuthorizationPolicies) ||
		len(fastRes.PeerAuthentications) != len(slowRes.PeerAuthentications) ||
		len(fastRes.RequestAuthentications) != len(slowRes.RequestAuthentications) {
		t.Fatalf("fast path %+v, slow path %+v, of:\n%s", fastRes, slowRes, data)
	}
	for i, fp := range fastRes.AuthorizationPolicies {
		sp := slowRes.AuthorizationPolicies[i]
		samePositions(t, fp, sp, sp.lines, data)
		a, b := *fp, *sp
		a.lines, b.lines = nil, nil
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("fast path %+v, slow path %+v, of:\n%s", a, b, data)
		}
		if fmt.Sprint(Validate(fp, Options{})) != fmt.Sprint(Validate(sp, Options{})) {
			t.Fatalf("Validate: fast path %v, slow path %v, of:\n%s", Validate(fp, Options{}), Validate(sp, Options{}), data)
		}
	}
	for i, fp := range fastRes.PeerAuthentications {
		sp := slowRes.PeerAuthentications[i]
		samePositions(t, fp, sp, sp.lines, data)
		a, b := *fp, *sp
		a.lines, b.lines = nil, nil
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("fast path %+v, slow path %+v, of:\n%s", a, b, data)
		}
	}
	for i, fp := range fastRes.RequestAuthentications {
		sp := slowRes.RequestAuthentications[i]
		samePositions(t, fp, sp, sp.lines, data)
		a, b := *fp, *sp
		a.lines, b.lines = nil, nil
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("fast path %+v, slow path %+v, of:\n%s", a, b, data)
		}
	}
}

// samePositions compares where fast and slow place every field the slow
// path's index knows, and a field neither knows.
func samePositions(t *testing.T, fast, slow resource, lines *lineIndex, data []byte) {
	t.Helper()
	lines.line("")
	for path := range lines.lines {
		for _, field := range []string{path, path + ".unknown"} {
			if f, s := fast.position(field), slow.position(field); f != s {
				t.Fatalf("%s of %s: fast path %s, slow path %s, of:\n%s", field, slow.ID(), f, s, data)
			}
		}
	}
	if f, s := fast.position("nowhere"), slow.position("nowhere"); f != s {
		t.Fatalf("a field of %s nowhere: fast path %s, slow path %s", slow.ID(), f, s)
	}
}

// fastPathSeeds are the goldens' inputs, the cases' policies, issue #15's
// shape of policy, and documents written for the fast path's edges.
func fastPathSeeds(tb testing.TB) []string {
	seeds := []string{"", "---\n", "kind: [", "null\n", "[]\n", "{}\n", "# only a comment\n", "- a\n- b\n",
		"\n# c\n\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec: {action: DENY, rules: [{}]}\n",
		"{\n  \"apiVersion\": \"security.istio.io/v1\", \"kind\": \"AuthorizationPolicy\",\n  \"metadata\": {\"name\": \"p\"}, \"spec\": {}\n}\n",
		"a.b: 1\na: {b: 2}\n", "x: &a {y: 1}\nz: *a\n", "<<: {a: 1}\n", "!!str 5: x\n", "8080: a\n\"8080\": b\n",
		"a: yes\nb: on\nc: 0777\nd: 1e3\ne: 2024-01-02\nf: .inf\ng: \"\\xff\"\nh: 0x10\ni: 1_000\nj: ~\nk: |\n  text\nl: >\n  folded\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n, labels: {a: b}, annotations: {istio.io/dry-run: \"true\"}}\n" +
			"spec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [a, b], not_principals: [c], notPrincipals: [d]}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: 5, namespace: n}\nspec: {}\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nMetadata: {name: p}\nmetadata: {name: q, namespace: n}\n",
		"apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: p, namespace: n}\n  spec:\n    rules:\n    - to: [{operation: {ports: [\"x\"]}}]\n",
		"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: n}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
		"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: n}\nspec:\n  jwtRules:\n  - issuer: https://example.com\n    jwksUri: ftp://x\n",
	}
	goldens, _ := filepath.Glob("testdata/golden/*.golden")
	for _, file := range goldens {
		src, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		input, _, _ := strings.Cut(string(src), "\n--------")
		seeds = append(seeds, input)
	}
	files, _ := filepath.Glob("testdata/cases/*.yaml")
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		var cases []struct {
			Policies string `json:"policies"`
		}
		if err := yaml.Unmarshal(src, &cases); err != nil {
			tb.Fatal(err)
		}
		for _, c := range cases {
			seeds = append(seeds, c.Policies)
		}
	}
	return seeds
}

// checkFill holds fillMessage to what checkShape and protojson make of
// the spec of obj, read as each kind's: where fillMessage fills a spec,
// checkShape finds nothing wrong, protojson reads the same message, and
// an AuthorizationPolicy converts to the same Policy.
func checkFill(t *testing.T, obj any, text []byte) {
	t.Helper()
	m, _ := obj.(map[string]any)
	spec, ok := m["spec"]
	if !ok || spec == nil {
		return
	}
	checkConvertMap(t, m, spec, text)
	for _, kind := range []func() proto.Message{
		func() proto.Message { return &apiv1beta1.AuthorizationPolicy{} },
		func() proto.Message { return &apiv1beta1.PeerAuthentication{} },
		func() proto.Message { return &apiv1beta1.RequestAuthentication{} },
	} {
		filled := kind()
		if !fillMessage(spec, filled.ProtoReflect()) {
			if !proto.Equal(filled, kind()) {
				t.Fatalf("fillMessage refused the spec but left %v, of:\n%s", filled, text)
			}
			continue
		}
		ps := &problems{}
		checkShape(spec, filled.ProtoReflect().Descriptor(), "spec", ps)
		if len(ps.errs) > 0 {
			t.Fatalf("fillMessage filled a %s checkShape refuses (%v), of:\n%s", filled.ProtoReflect().Descriptor().Name(), ps.err(), text)
		}
		js, _ := json.Marshal(spec)
		want := kind()
		if err := protojson.Unmarshal(js, want); err != nil {
			t.Fatalf("fillMessage filled a %s protojson refuses (%v), of:\n%s", filled.ProtoReflect().Descriptor().Name(), err, text)
		}
		if !proto.Equal(filled, want) {
			t.Fatalf("fillMessage: %v\nprotojson: %v\nof:\n%s", filled, want, text)
		}
		if ap, ok := filled.(*apiv1beta1.AuthorizationPolicy); ok {
			meta := &metav1.ObjectMeta{Name: "p", Namespace: "n"}
			got, gotErr := convert(meta, ap, &Policy{})
			exp, expErr := convert(meta, want.(*apiv1beta1.AuthorizationPolicy), &Policy{})
			if !reflect.DeepEqual(got, exp) || fmt.Sprint(gotErr) != fmt.Sprint(expErr) {
				t.Fatalf("convert: fillMessage's %+v, protojson's %+v, of:\n%s", got, exp, text)
			}
		}
	}
}

// checkConvertMap holds convertMap to decodeSpec and convert: where it
// converts a spec, checkShape and checkSpecShape find nothing wrong, and
// convert of protojson's message is the same policy, or the same error.
func checkConvertMap(t *testing.T, obj map[string]any, spec any, text []byte) {
	t.Helper()
	meta, ok := objectMeta(obj)
	if !ok {
		meta = &metav1.ObjectMeta{Name: "p", Namespace: "n"}
	}
	got, gotErr, ok := convertMap(meta, spec, &Policy{})
	if !ok {
		return
	}
	ps := &problems{}
	checkShape(spec, (&apiv1beta1.AuthorizationPolicy{}).ProtoReflect().Descriptor(), "spec", ps)
	checkSpecShape(spec, ps)
	if len(ps.errs) > 0 {
		t.Fatalf("convertMap converted a spec decodeSpec refuses (%v), of:\n%s", ps.err(), text)
	}
	js, _ := json.Marshal(spec)
	want := &apiv1beta1.AuthorizationPolicy{}
	if err := protojson.Unmarshal(js, want); err != nil {
		t.Fatalf("convertMap converted a spec protojson refuses (%v), of:\n%s", err, text)
	}
	exp, expErr := convert(meta, want, &Policy{})
	if !reflect.DeepEqual(got, exp) || fmt.Sprint(gotErr) != fmt.Sprint(expErr) {
		t.Fatalf("convertMap: %+v, %v\nconvert: %+v, %v\nof:\n%s", got, gotErr, exp, expErr, text)
	}
}
