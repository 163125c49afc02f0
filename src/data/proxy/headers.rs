//! Header rewriting between client and upstream (RFC 9110 §7.6.1 hop-by-hop fields, and the
//! de-facto `X-Forwarded-*` set).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that describe one connection, never forwarded. `Connection` may name more.
/// Names, not strings: a lookup by string would parse and validate it every time.
pub(super) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including every field the `Connection` header lists, except
/// the fields that frame or route the message: a listed `Content-Length`, `Transfer-Encoding`
/// or `Host` is refused before it gets here (HTTP/1), and Weir derives the framing it sends.
/// `TE: trailers` stays (as `te: trailers` alone): it says the client takes trailers, which
/// Weir passes through, and gRPC requires it; other TE codings go.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        crate::data::http1::tokens(std::iter::once(v.as_bytes())).any(|t| t.eq_ignore_ascii_case(b"trailers"))
    });
    // Only the rare request with `Connection: foo, bar` pays for collecting the names.
    if headers.contains_key(header::CONNECTION) {
        let values = headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes);
        let extra: Vec<HeaderName> = crate::data::http1::tokens(values)
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .filter(|n| ![header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::HOST].contains(n))
            .collect();
        for name in extra {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets `X-Forwarded-For` (appending the client to any chain already there),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, and makes sure `Host` is present (HTTP/2 clients
/// send `:authority` instead, and HTTP/1.1 upstreams require `Host`).
pub fn set_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str, authority: Option<&str>) {
    // Every field of the chain, in order (a client may send several), then the client.
    let chain = crate::data::http1::tokens(headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes));
    let xff = match chain.collect::<Vec<_>>() {
        prev if prev.is_empty() => Some(client_ip.clone()),
        prev => {
            let mut v = prev.join(&b", "[..]);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    let host = headers.get(header::HOST).cloned().or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.entry(header::HOST).or_insert(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn appends_forwarded_for_and_sets_host_for_h2() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", Some("app.local:8080"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.local:8080");
        assert_eq!(h["host"], "app.local:8080");
    }
}
