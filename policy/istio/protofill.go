package istio

import (
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Filling the client-go and protobuf types from the decoded value
// directly, without a round trip through JSON. Each says false, leaving
// checkShape and the JSON decoders to speak, for anything they do not
// know to read exactly as those would.

// fillMessage sets the fields of m from v, as protojson.Unmarshal of v's
// JSON form would, where checkShape finds nothing to report in v. It says
// false, with m reset, where checkShape or protojson could refuse v: an
// unknown key, a value of the wrong type, a null in a list, a field given
// by both its JSON and its proto name, and fields of kinds it does not
// fill (numbers, booleans, well-known types, maps of messages).
func fillMessage(v any, m protoreflect.Message) bool {
	obj, ok := v.(map[string]any)
	if !ok || !fill(obj, m) {
		proto.Reset(m.Interface())
		return false
	}
	return true
}

func fill(obj map[string]any, m protoreflect.Message) bool {
	fields := m.Descriptor().Fields()
	var set []protoreflect.FieldNumber
	for key, v := range obj {
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil || slices.Contains(set, fd.Number()) {
			return false
		}
		set = append(set, fd.Number())
		if v == nil {
			continue // null: absent
		}
		if !fillField(fd, v, m) {
			return false
		}
	}
	return true
}

func fillField(fd protoreflect.FieldDescriptor, v any, m protoreflect.Message) bool {
	switch {
	case fd.IsMap():
		obj, ok := v.(map[string]any)
		if !ok || fd.MapKey().Kind() != protoreflect.StringKind || fd.MapValue().Kind() != protoreflect.StringKind {
			return false
		}
		mm := m.Mutable(fd).Map()
		for k, e := range obj {
			s, ok := e.(string)
			if !ok {
				return false
			}
			mm.Set(protoreflect.ValueOfString(k).MapKey(), protoreflect.ValueOfString(s))
		}
	case fd.IsList():
		items, ok := v.([]any)
		if !ok {
			return false
		}
		list := m.Mutable(fd).List()
		for _, item := range items {
			if fd.Kind() == protoreflect.MessageKind {
				e := list.NewElement()
				obj, ok := item.(map[string]any)
				if !ok || !fillable(fd) || !fill(obj, e.Message()) {
					return false
				}
				list.Append(e)
				continue
			}
			s, ok := scalar(fd, item)
			if !ok {
				return false
			}
			list.Append(s)
		}
	case fd.Kind() == protoreflect.MessageKind:
		obj, ok := v.(map[string]any)
		return ok && fillable(fd) && fill(obj, m.Mutable(fd).Message())
	default:
		s, ok := scalar(fd, v)
		if !ok {
			return false
		}
		m.Set(fd, s)
	}
	return true
}

// fillable says whether fill reads fd's messages: not the well-known
// types, which protojson reads from strings and numbers.
func fillable(fd protoreflect.FieldDescriptor) bool {
	return fd.Message().FullName().Parent() != "google.protobuf"
}

// scalar is a string or an enum value, or false.
func scalar(fd protoreflect.FieldDescriptor, v any) (protoreflect.Value, bool) {
	s, ok := v.(string)
	if !ok {
		return protoreflect.Value{}, false
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(s), true
	case protoreflect.EnumKind:
		if e := fd.Enum().Values().ByName(protoreflect.Name(s)); e != nil {
			return protoreflect.ValueOfEnum(e.Number()), true
		}
	}
	return protoreflect.Value{}, false
}

// objectMeta is the metadata of object m as encoding/json fills client-go's
// ObjectMeta, where m holds nothing else than apiVersion, kind, metadata,
// spec and status and its metadata nothing else than a name, a namespace,
// annotations and labels, all strings; otherwise false.
func objectMeta(m map[string]any) (*metav1.ObjectMeta, bool) {
	for key := range m {
		switch key {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			return nil, false
		}
	}
	meta, ok := m["metadata"].(map[string]any)
	if !ok {
		return nil, false
	}
	out := &metav1.ObjectMeta{}
	for key, v := range meta {
		switch key {
		case "name":
			out.Name, ok = v.(string)
		case "namespace":
			out.Namespace, ok = v.(string)
		case "annotations":
			out.Annotations, ok = stringMap(v)
		case "labels":
			out.Labels, ok = stringMap(v)
		default:
			ok = false
		}
		if !ok {
			return nil, false
		}
	}
	return out, true
}

func stringMap(v any) (map[string]string, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		if out[k], ok = v.(string); !ok {
			return nil, false
		}
	}
	return out, true
}
