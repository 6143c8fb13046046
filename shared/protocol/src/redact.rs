//! The one redaction of secrets in URLs for the whole workspace: every log line, error and
//! status that shows a broker or database URL goes through [`redact_url`].

/// Query parameters whose values are secrets (libpq / tokio-postgres accept `?password=`).
const SECRET_PARAMS: [&str; 3] = ["password", "sslpassword", "token"];

/// `url` (or a comma-separated list of URLs) with every `user:password@` part shown as
/// `***@` and every `password` / `sslpassword` / `token` query value as `***`.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(u: &str) -> String {
    let (head, query) = match u.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (u, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &head[..scheme + 3], &head[at..])
        }
        _ => head.to_owned(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            redact_url("amqp://user:S3CRET@rabbit:5672/%2f"),
            "amqp://***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("nats://a:S3CRET@n1:4222,nats://n2:4222"),
            "nats://***@n1:4222,nats://n2:4222"
        );
        assert_eq!(
            redact_url("postgres://u@db/x?sslmode=require&password=S3CRET"),
            "postgres://***@db/x?sslmode=require&password=***"
        );
        assert_eq!(redact_url("memory://"), "memory://");
        assert!(!redact_url("amqq://u:S3CRET@h").contains("S3CRET"));
    }
}
