//! Network rules shared by the remote tier and the model manager: which URLs may be used,
//! `Retry-After`, and backoff with jitter. A leaf module: it imports nothing else of the crate.
//!
//! A URL is parsed once, by the parser the HTTP client itself uses (`http::Uri`, which ureq
//! takes), and every decision (scheme, loopback, userinfo) is made on that parsed value; the
//! request is then made with the same value, so what was checked is what is connected to.

use std::time::Duration;

/// Why a URL is refused. The text never repeats a URL that carried credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL the HTTP client can use.
    #[error("{url} is not a valid URL ({detail})")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What the parser said.
        detail: String,
    },
    /// A scheme other than http and https, or none.
    #[error("{url} must start with https:// (or http:// on loopback)")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// `user:password@host`: credentials in a URL end up in logs and error messages, and an
    /// `@` is how a URL hides its real host.
    #[error("a URL with a user name or password (user@host) is refused; host {host}")]
    UserInfo {
        /// The host the URL really names.
        host: String,
    },
    /// Plain http to a host that is not loopback.
    #[error("{url} uses plain http to a non-loopback host ({host})")]
    PlainHttp {
        /// The URL as given.
        url: String,
        /// The host it names.
        host: String,
    },
}

/// A URL that passed the rules: the parsed value the request is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    uri: http::Uri,
}

impl Url {
    /// Parses `url` and applies the rules: http or https, a host, no userinfo, and plain http
    /// only to a loopback host (`localhost`, 127.0.0.0/8, `::1`) unless `allow_plain_http`.
    pub fn parse(url: &str, allow_plain_http: bool) -> Result<Self, UrlError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UrlError::Invalid {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        let secure = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(UrlError::Scheme {
                    url: url.to_owned(),
                })
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(UrlError::Scheme {
                url: url.to_owned(),
            });
        };
        let host = authority.host();
        if authority.as_str().contains('@') {
            return Err(UrlError::UserInfo {
                host: host.to_owned(),
            });
        }
        if host.is_empty() {
            return Err(UrlError::Invalid {
                url: url.to_owned(),
                detail: "no host".into(),
            });
        }
        if !secure && !is_loopback_host(host) && !allow_plain_http {
            return Err(UrlError::PlainHttp {
                url: url.to_owned(),
                host: host.to_owned(),
            });
        }
        Ok(Self { uri })
    }

    /// The parsed URL, to hand to the HTTP client.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// Whether the host is loopback.
    #[cfg(test)]
    fn is_loopback(&self) -> bool {
        self.uri.host().is_some_and(is_loopback_host)
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

/// A parsed host (as `http::uri::Authority::host` gives it: IPv6 in brackets) that is
/// loopback. Only literal addresses and `localhost` count: a name is whatever DNS says.
fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `Retry-After` in seconds: a non-negative number of seconds (fractions allowed) or an HTTP
/// date; capped at an hour. Anything else (negative, NaN, garbage) is ignored.
pub fn parse_retry_after(v: &str) -> Option<f64> {
    let v = v.trim();
    let secs = if let Ok(s) = v.parse::<f64>() {
        s
    } else {
        let when = httpdate::parse_http_date(v).ok()?;
        when.duration_since(std::time::SystemTime::now())
            .map_or(0.0, |d| d.as_secs_f64())
    };
    (secs.is_finite() && secs >= 0.0).then(|| secs.min(3600.0))
}

/// A uniform random number in [0, 1) from the operating system's random source, so that
/// devices that failed at the same moment do not retry in lockstep.
pub fn jitter() -> f64 {
    let bits = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness (never seen): the clock's sub-second part, better than nothing.
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::from(d.subsec_nanos()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    // The top 53 bits as a fraction.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with "equal jitter": for the `n`-th consecutive failure (from 1), half
/// of `base * 2^(n-1)` (capped at `cap`) plus a random part of the other half.
pub fn backoff(n: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.as_secs_f64() * f64::from(1u32 << n.saturating_sub(1).min(16));
    let ceiling = exp.min(cap.as_secs_f64());
    Duration::from_secs_f64(ceiling * (0.5 + 0.5 * jitter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Url {
        Url::parse(url, false).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> UrlError {
        Url::parse(url, false).expect_err(url)
    }

    #[test]
    fn loopback_and_https_pass() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/v1/chat/completions",
            "http://127.9.9.9/",
            "http://localhost:1/x",
            "http://LOCALHOST/x",
            "HTTP://127.0.0.1/x",
            "http://[::1]:8080/v1",
            "https://api.example.com/v1",
            "https://192.168.1.5/m.gguf",
        ] {
            ok(url);
        }
        assert!(ok("http://[::1]:8080").is_loopback());
        assert!(!ok("https://api.example.com").is_loopback());
        assert!(ok("HTTPS://api.example.com").is_https());
    }

    /// Every shape that once passed, or could pass, a text-based host check, sending the
    /// request (and its key) in clear to another host.
    #[test]
    fn hostile_urls_are_refused() {
        for url in [
            "http://evil.example?@127.0.0.1",
            "http://evil.example#@127.0.0.1",
            "http://evil.example/?x=@127.0.0.1",
            "http://evil.example/#@localhost",
            "http://evil.example?x=/@[::1]",
            "http://evil.example:80?@127.0.0.1:80",
            "http://localhost.evil.example/",
            "http://127.0.0.1.evil.example/",
            "http://evil.example/127.0.0.1",
            "http://[::ffff:10.0.0.1]/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://127.1/",
        ] {
            assert!(
                matches!(
                    refused(url),
                    UrlError::PlainHttp { .. } | UrlError::Invalid { .. }
                ),
                "{url}: {:?}",
                refused(url)
            );
        }
        // The real host is named in the error, never the loopback decoy.
        let e = refused("http://evil.example?@127.0.0.1").to_string();
        assert!(e.contains("(evil.example)"), "{e}");
    }

    #[test]
    fn userinfo_is_refused_even_on_https_and_loopback() {
        for url in [
            "http://127.0.0.1@evil.example/",
            "http://evil.example@127.0.0.1/",
            "http://user:pass@127.0.0.1:8080/",
            "https://user:sk-secret@api.example.com/v1",
            "https://@api.example.com/",
        ] {
            let e = refused(url);
            assert!(matches!(e, UrlError::UserInfo { .. }), "{url}: {e:?}");
            assert!(!e.to_string().contains("sk-secret"), "{e}");
        }
        assert!(refused("http://127.0.0.1@evil.example/")
            .to_string()
            .contains("evil.example"));
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "",
            "ftp://example.com/m",
            "file:///etc/passwd",
            "127.0.0.1:8080",
            "/v1/chat/completions",
            "http://",
            "http:///x",
            "http://127.0.0.1\\@evil.example/",
            "http://127.0.0.1 @evil.example/",
            " http://127.0.0.1/",
            "http://127.0.0.1/\n",
            "http://[::1/",
        ] {
            let e = refused(url);
            assert!(
                matches!(e, UrlError::Invalid { .. } | UrlError::Scheme { .. }),
                "{url:?}: {e:?}"
            );
        }
    }

    #[test]
    fn plain_http_to_a_lan_host_needs_the_opt_in() {
        assert!(matches!(
            refused("http://192.168.1.5:8080"),
            UrlError::PlainHttp { .. }
        ));
        let lan = Url::parse("http://192.168.1.5:8080", true).unwrap();
        assert!(!lan.is_loopback() && !lan.is_https());
        // The opt-in never admits userinfo.
        assert!(Url::parse("http://u@192.168.1.5", true).is_err());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(2.0));
        assert_eq!(parse_retry_after(" 0.5 "), Some(0.5));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("inf"), None);
        assert_eq!(parse_retry_after("1e308"), Some(3600.0));
        assert_eq!(parse_retry_after("soon"), None);
        // An HTTP date in the past means now; one in the future, the seconds until it.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(0.0)
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let s = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!((100.0..=120.0).contains(&s), "{s}");
    }

    /// Two draws in a row differ (the clock-based jitter gave the same value for every call
    /// within a microsecond on Apple platforms), and the values spread over [0, 1).
    #[test]
    fn jitter_is_random() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mut distinct = draws.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 990, "{} distinct of 1000", distinct.len());
        // Each tenth of the range holds some of them.
        for d in 0..10 {
            let lo = f64::from(d) / 10.0;
            let n = draws.iter().filter(|j| (lo..lo + 0.1).contains(*j)).count();
            assert!(n > 40, "{n} draws in [{lo}, {})", lo + 0.1);
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_spreads() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(30));
        for n in 1..=20 {
            let ceiling = (0.5 * f64::from(1u32 << (n - 1).min(16))).min(30.0);
            let w = backoff(n, base, cap).as_secs_f64();
            assert!(w >= ceiling / 2.0 - 1e-9 && w <= ceiling + 1e-9, "{n}: {w}");
        }
        let waits: Vec<_> = (0..50).map(|_| backoff(4, base, cap)).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "no jitter: {waits:?}");
    }
}
