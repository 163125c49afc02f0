//! Maps field paths to source positions and back, using the spanned TOML tree.
//!
//! Validation works on the typed config and names fields by dotted path; this module finds that
//! path in the source so `weir check` can print `line:column`. Serde errors come the other way:
//! they carry a byte span, and we name the field whose value contains it.

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::Problem;

/// 1-based (line, column) of a byte offset; the column counts characters.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Splits `apps.demo.versions.v1.endpoints[2].addr` into keys and indexes.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn child<'v, 'i>(value: &'v DeValue<'i>, seg: &Segment<'_>) -> Option<&'v Spanned<DeValue<'i>>> {
    match (value, seg) {
        (DeValue::Table(t), Segment::Key(k)) => find_key(t, k).map(|(_, v)| v),
        (DeValue::Array(a), Segment::Index(i)) => a.get(*i),
        _ => None,
    }
}

fn find_key<'t, 'i>(
    table: &'t DeTable<'i>,
    key: &str,
) -> Option<(&'t Spanned<toml::de::DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key)
}

/// The span of the deepest existing part of `path`: the key itself when it is present (so the
/// caret lands on the field name), else the nearest ancestor that is.
fn span_of(doc: &Spanned<DeTable<'_>>, path: &str) -> Option<Range<usize>> {
    let segs = segments(path);
    let mut best: Option<Range<usize>> = None;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for seg in &segs {
        let next = match (value, seg) {
            (None, Segment::Key(k)) => find_key(table, k).map(|(key, v)| {
                best = Some(key.span());
                v
            }),
            (Some(v), seg) => child(v.get_ref(), seg).inspect(|c| {
                if let (DeValue::Table(t), Segment::Key(k)) = (v.get_ref(), seg) {
                    best = find_key(t, k).map(|(key, _)| key.span()).or(Some(c.span()));
                } else {
                    best = Some(c.span());
                }
            }),
            (None, Segment::Index(_)) => None,
        };
        match next {
            Some(v) => {
                if let DeValue::Table(t) = v.get_ref() {
                    table = t;
                }
                value = Some(v);
            }
            None => break,
        }
    }
    best
}

/// Fills in the location of each problem.
pub fn locate_all(text: &str, mut problems: Vec<Problem>) -> Vec<Problem> {
    if let Ok(doc) = DeTable::parse(text) {
        for p in &mut problems {
            p.location = span_of(&doc, &p.field).map(|s| line_col(text, s.start));
        }
    }
    problems
}

/// The dotted path of the deepest key or value whose span contains `offset`. Tables opened by
/// a `[header]` span only their header, so the search descends into every table rather than
/// pruning by span.
fn path_at(doc: &Spanned<DeTable<'_>>, offset: usize) -> String {
    fn search(table: &DeTable<'_>, offset: usize) -> Option<String> {
        table.iter().find_map(|(k, v)| {
            let here = k.span().contains(&offset) || v.span().contains(&offset);
            let deeper = match v.get_ref() {
                DeValue::Table(t) => search(t, offset).map(|rest| format!("{}.{rest}", k.get_ref())),
                DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                    let inner = match item.get_ref() {
                        DeValue::Table(t) => search(t, offset).map(|rest| format!(".{rest}")),
                        _ => None,
                    };
                    inner
                        .or_else(|| item.span().contains(&offset).then(String::new))
                        .map(|rest| format!("{}[{i}]{rest}", k.get_ref()))
                }),
                _ => None,
            };
            deeper.or_else(|| here.then(|| k.get_ref().to_string()))
        })
    }
    search(doc.get_ref(), offset).unwrap_or_default()
}

/// A problem from a TOML syntax or type error.
pub fn parse_error(text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let field = match (&span, DeTable::parse(text)) {
        (Some(s), Ok(doc)) => path_at(&doc, s.start),
        _ => String::new(),
    };
    Problem { field, location: span.map(|s| line_col(text, s.start)), message: err.message().trim().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, t.find('=').unwrap()), (1, 3));
        assert_eq!(line_col(t, t.rfind('=').unwrap()), (2, 4));
    }

    #[test]
    fn finds_nested_keys_and_indexes() {
        let t = "[apps.demo.split]\nv1 = 1\nv3 = 2\n[[apps.demo.versions.v1.endpoints]]\naddr = \"x\"\n";
        let doc = DeTable::parse(t).unwrap();
        let s = span_of(&doc, "apps.demo.split.v3").unwrap();
        assert_eq!(line_col(t, s.start), (3, 1));
        let s = span_of(&doc, "apps.demo.versions.v1.endpoints[0].addr").unwrap();
        assert_eq!(line_col(t, s.start), (5, 1));
        // A missing leaf points at its nearest existing ancestor.
        let s = span_of(&doc, "apps.demo.split.v9").unwrap();
        assert_eq!(&t[s], "split");
    }

    #[test]
    fn path_at_names_the_field_of_a_type_error() {
        let t = "[apps.demo.split]\nv1 = \"ten\"\n";
        let doc = DeTable::parse(t).unwrap();
        let at = t.find("\"ten\"").unwrap();
        assert_eq!(path_at(&doc, at), "apps.demo.split.v1");
    }
}
