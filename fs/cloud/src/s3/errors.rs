//! From aws-sdk-s3 errors to [`StoreError`], one table.
//!
//! | what failed                                   | StoreError                |
//! |-----------------------------------------------|---------------------------|
//! | code NoSuchBucket                             | NoBucket                  |
//! | 412, PreconditionFailed, 409 ConditionalRequestConflict | Precondition    |
//! | 404, NoSuchKey, NotFound                      | NotFound                  |
//! | 401, 403, InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, … | Auth |
//! | 416, InvalidRange                             | Corrupt (range past the end) |
//! | 5xx, SlowDown                                 | Server (transient)        |
//! | timeout, connection refused/reset, DNS, cut-short answer | Unreachable (transient) |
//! | no credentials found by the AWS chain         | Auth                      |
//! | anything else                                 | Other                     |
//!
//! Messages are one line and carry the store's URL, the endpoint (without user info) and the
//! key, never a credential: the server's own message is kept only for 5xx and unknown codes.

use crate::StoreError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use std::error::Error;

/// The parts of a store's URL that error messages name.
#[derive(Clone, Debug)]
pub(crate) struct Place {
    /// `s3://bucket/prefix`
    pub store: String,
    pub bucket: String,
    /// The endpoint URL without user info, or the AWS default for the region.
    pub endpoint: String,
}

/// An error answer of the store: HTTP status and S3 error code/message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer<'a> {
    pub status: u16,
    pub code: Option<&'a str>,
    pub message: Option<&'a str>,
}

impl Place {
    /// Map any SDK error of an operation on `key`.
    pub fn map<E>(&self, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(e) => {
                let answer =
                    Answer { status: e.raw().status().as_u16(), code: e.err().code(), message: e.err().message() };
                self.classify(key, answer)
            }
            SdkError::ResponseError(e) if e.raw().status().is_server_error() => {
                self.classify(key, Answer { status: e.raw().status().as_u16(), code: None, message: None })
            }
            SdkError::DispatchFailure(d) if d.is_other() && mentions_credentials(&err) => self.no_credentials(),
            SdkError::DispatchFailure(d) if d.is_user() => StoreError::Other(format!("{key}: {}", chain(&err))),
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                self.unreachable(chain(&err))
            }
            _ => StoreError::Other(format!("{} {key}: {}", self.store, chain(&err))),
        }
    }

    /// The table above, for an answer the store gave.
    pub fn classify(&self, key: &str, a: Answer<'_>) -> StoreError {
        let code = a.code.unwrap_or("");
        match (a.status, code) {
            (_, "NoSuchBucket") => StoreError::NoBucket(format!("{} at {}", self.bucket, self.endpoint)),
            (412, _) | (_, "PreconditionFailed" | "ConditionalRequestConflict") => StoreError::precondition(key),
            (404, _) | (_, "NoSuchKey" | "NotFound") => StoreError::not_found(key),
            (401 | 403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "ExpiredToken") => {
                self.denied(code)
            }
            (416, _) | (_, "InvalidRange") => {
                StoreError::Corrupt { key: key.to_string(), why: "range past the end".into() }
            }
            (status @ 500..=599, _) => StoreError::Server { status, msg: summary(code, a.message) },
            (_, "SlowDown") => StoreError::Server { status: 503, msg: summary(code, a.message) },
            (status, _) => {
                StoreError::Other(format!("{} {key}: HTTP {status} {}", self.store, summary(code, a.message)))
            }
        }
    }

    pub fn unreachable(&self, msg: String) -> StoreError {
        StoreError::Unreachable { endpoint: self.endpoint.clone(), msg }
    }

    fn denied(&self, code: &str) -> StoreError {
        let code = if code.is_empty() { "HTTP 403" } else { code };
        StoreError::Auth(format!(
            "access denied by the store at {} ({}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({code})",
            self.endpoint, self.store
        ))
    }

    fn no_credentials(&self) -> StoreError {
        StoreError::Auth(format!(
            "no credentials for the store at {} ({}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or an AWS profile",
            self.endpoint, self.store
        ))
    }
}

/// `code: message` on one line, at most 200 characters.
fn summary(code: &str, message: Option<&str>) -> String {
    let text = match message {
        Some(m) if !code.is_empty() => format!("{code}: {m}"),
        Some(m) => m.to_string(),
        None if code.is_empty() => "no error code".to_string(),
        None => code.to_string(),
    };
    one_line(&text)
}

/// An error and its sources, joined with ": " on one line (repeats dropped, at most 8 links).
pub(crate) fn chain(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next.filter(|_| parts.len() < 8) {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    one_line(&parts.join(": "))
}

fn mentions_credentials(err: &(dyn Error + 'static)) -> bool {
    let text = chain(err).to_lowercase();
    text.contains("credential") || text.contains("identity")
}

fn one_line(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match flat.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// `url` without user info (`http://user:pass@host/` → `http://host/`).
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let slash = if rest.contains('/') { "/" } else { "" };
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{host}{slash}{path}")
}

#[cfg(test)]
mod tests {
    use super::{redact_url, Answer, Place};
    use crate::StoreError;

    fn place() -> Place {
        Place { store: "s3://bkt/p".into(), bucket: "bkt".into(), endpoint: "http://127.0.0.1:1".into() }
    }

    fn classify(status: u16, code: Option<&str>) -> StoreError {
        place().classify("k", Answer { status, code, message: Some("msg") })
    }

    #[test]
    fn answers_map_by_code_then_status() {
        assert!(matches!(classify(404, Some("NoSuchBucket")), StoreError::NoBucket(_)));
        assert!(matches!(classify(412, Some("PreconditionFailed")), StoreError::Precondition { .. }));
        assert!(matches!(classify(409, Some("ConditionalRequestConflict")), StoreError::Precondition { .. }));
        assert!(matches!(classify(404, None), StoreError::NotFound { .. }));
        assert!(matches!(classify(404, Some("NoSuchKey")), StoreError::NotFound { .. }));
        assert!(matches!(classify(403, Some("SignatureDoesNotMatch")), StoreError::Auth(_)));
        assert!(matches!(classify(400, Some("InvalidAccessKeyId")), StoreError::Auth(_)));
        assert!(matches!(classify(416, None), StoreError::Corrupt { .. }));
        assert!(matches!(classify(500, Some("InternalError")), StoreError::Server { status: 500, .. }));
        assert!(matches!(classify(503, Some("SlowDown")), StoreError::Server { status: 503, .. }));
        assert!(matches!(classify(400, Some("BadDigest")), StoreError::Other(_)));
    }

    #[test]
    fn auth_errors_name_the_store_and_what_to_check() {
        let msg = classify(403, Some("SignatureDoesNotMatch")).to_string();
        assert_eq!(
            msg,
            "access denied by the store at http://127.0.0.1:1 (s3://bkt/p): check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (SignatureDoesNotMatch)"
        );
    }

    #[test]
    fn server_messages_become_one_short_line() {
        let long = format!("line one\nline two {}", "x".repeat(500));
        let e = place().classify("k", Answer { status: 500, code: Some("InternalError"), message: Some(&long) });
        let text = e.to_string();
        assert!(!text.contains('\n') && text.chars().count() < 260, "{text}");
    }

    #[test]
    fn user_info_is_dropped_from_endpoints() {
        assert_eq!(redact_url("http://user:secret@10.0.0.1:9000/x"), "http://10.0.0.1:9000/x");
        assert_eq!(redact_url("https://s3.example.com"), "https://s3.example.com");
        assert_eq!(redact_url("http://a:b@h"), "http://h");
    }
}
