package policy

import "errors"

// Sentinel errors callers branch on. Wrapped errors carry the detail
// (file:line, JSON path, key ID).
var (
	// ErrInvalidInput: the input document is malformed; the message names the JSON path.
	ErrInvalidInput = errors.New("policy: invalid input")
	// ErrBundle: a bundle could not be read, verified or compiled; the last good set stays in force.
	ErrBundle = errors.New("policy: bundle rejected")
	// ErrSignature: a bundle's .signatures.json is missing, does not verify, or names an unknown key.
	ErrSignature = errors.New("policy: bundle signature")
	// ErrNoPolicy: a bundle set would remove every policy package in force
	// (an emptied bundle, most likely); it wraps ErrBundle too, and the last
	// good set stays in force. A bundle whose .manifest declares it empty
	// (EmptyBundleMetadata) is loaded anyway.
	ErrNoPolicy = errors.New("policy: bundle set has no policy package")
	// ErrUndefined: the bundle set produced no decision document for the input.
	ErrUndefined = errors.New("policy: decision undefined")
)
