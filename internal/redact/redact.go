// Package redact removes secrets from text before it reaches a log, an error
// or an event: the password in a URL's userinfo, the values of secret query
// parameters (a SAS token's sig, se, sp, ...; password, token, key, ...), and
// the secret parts of connection strings and DSNs (AccountKey=,
// SharedAccessSignature=, Password=, password=...).
//
// Every address the project prints or wraps into an error goes through
// [String] (or [Error] for an error). Each secret becomes [Mask]; the rest of
// the text is kept so that the address can still be recognised.
package redact

import (
	"regexp"
	"strings"
)

// Mask replaces every secret.
const Mask = "REDACTED"

// secretQuery matches a query parameter whose value is secret: the fields of
// an Azure SAS token, and any parameter whose name says it holds a secret.
var secretQuery = regexp.MustCompile(`(?i)([?&;](?:sig|se|st|sp|sv|sr|ss|srt|spr|si|sdd|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid|[a-z_-]*(?:pass|pwd|secret|token|key|auth|cred|signature)[a-z_-]*)=)([^&;#\s"'<>]*)`)

// secretField matches key=value fields of connection strings and DSNs whose
// value is secret, up to the next ';', '&', whitespace or quote.
var secretField = regexp.MustCompile(`(?i)(\b(?:AccountKey|SharedAccessSignature|SharedAccessKey|AccessKey|Password|Passwd|Pwd|Secret|Token|ClientSecret)\s*=\s*)([^;&\s"'<>]*)`)

// scheme finds the start of a URL's authority.
var scheme = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://`)

// String returns s with every secret it recognises replaced by [Mask].
func String(s string) string {
	s = userinfo(s)
	s = maskValues(secretQuery, s)
	s = maskValues(secretField, s)
	return s
}

// maskValues replaces the value (the second group) of each match of re in
// s by Mask, keeping a ':' that ends the value when the text ends there or
// goes on with a space: the colon of "... sig=XYZ: dial tcp ...", which an
// error message puts after an address, not part of the secret.
func maskValues(re *regexp.Regexp, s string) string {
	locs := re.FindAllStringSubmatchIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	last := 0
	for _, loc := range locs {
		vs, ve := loc[4], loc[5]
		if ve > vs && s[ve-1] == ':' && (ve == len(s) || s[ve] == ' ') {
			ve--
		}
		b.WriteString(s[last:vs])
		b.WriteString(Mask)
		last = ve
	}
	b.WriteString(s[last:])
	return b.String()
}

// userinfo masks the password of each URL in s: in scheme://user:pass@host,
// everything between the first ':' of the userinfo and the authority's last
// '@'. A password with an unescaped '/', '?' or '#' (which ends the
// authority as a URL parser reads it) is masked too: when the authority has
// no '@', the text up to the next space or quote is searched for one, so
// that "redis://:pa/ss@host" loses "pa/ss". That may also mask the port and
// path of a URL with an '@' in its path, such as "https://h:1/a@b" (it
// becomes "https://h:REDACTED@b"): more than needed, never less.
func userinfo(s string) string {
	locs := scheme.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	last := 0
	for _, loc := range locs {
		start := loc[1]
		if start < last {
			continue
		}
		end := start
		for end < len(s) && !strings.ContainsRune("/?#\t\n\r \"'<>", rune(s[end])) {
			end++
		}
		auth := s[start:end]
		at := strings.LastIndexByte(auth, '@')
		if at < 0 {
			for end < len(s) && !strings.ContainsRune("\t\n\r \"'<>", rune(s[end])) {
				end++
			}
			auth = s[start:end]
			if at = strings.LastIndexByte(auth, '@'); at < 0 {
				continue
			}
		}
		colon := strings.IndexByte(auth[:at], ':')
		if colon < 0 {
			continue
		}
		b.WriteString(s[last : start+colon+1])
		b.WriteString(Mask)
		last = start + at
	}
	b.WriteString(s[last:])
	return b.String()
}

// Error returns err with its message passed through [String]. The result
// unwraps to err, so errors.Is and errors.As still see what it wraps. It
// returns nil for nil.
func Error(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	red := String(msg)
	if red == msg {
		return err
	}
	return &redacted{msg: red, err: err}
}

type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }
