//! Secret detection rules: token formats with fixed prefixes and shapes, PEM private keys, and
//! one generic `key = "value"` rule gated on entropy.
//!
//! High precision over recall: every rule checks the shape exactly (length, alphabet, word
//! boundaries) and rejects well-known placeholders, so a finding is worth stopping a build for.

pub use xtask_kit::findings::Severity;

#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    shape: Shape,
}

#[derive(Debug)]
enum Shape {
    /// A literal prefix followed by `min..=max` characters of an alphabet, bounded on both sides.
    Token {
        prefixes: &'static [&'static str],
        alphabet: Alphabet,
        min: usize,
        max: usize,
        check: fn(&str) -> bool,
    },
    PemPrivateKey,
    GenericAssignment,
}

#[derive(Clone, Copy, Debug)]
enum Alphabet {
    UpperDigits,
    AlphaNum,
    AlphaNumUnderscore,
    AlphaNumDashUnderscore,
    AlphaNumDash,
    SlackPath,
}

impl Alphabet {
    fn contains(self, c: char) -> bool {
        match self {
            Alphabet::UpperDigits => c.is_ascii_uppercase() || c.is_ascii_digit(),
            Alphabet::AlphaNum => c.is_ascii_alphanumeric(),
            Alphabet::AlphaNumUnderscore => c.is_ascii_alphanumeric() || c == '_',
            Alphabet::AlphaNumDashUnderscore => c.is_ascii_alphanumeric() || c == '_' || c == '-',
            Alphabet::AlphaNumDash => c.is_ascii_alphanumeric() || c == '-',
            Alphabet::SlackPath => c.is_ascii_alphanumeric() || c == '/',
        }
    }
}

fn any(_: &str) -> bool {
    true
}

/// Slack tokens are `xoxb-<digits>-<digits>-<secret>`: demand the digit groups.
fn slack_token_shape(body: &str) -> bool {
    let parts: Vec<&str> = body.split('-').collect();
    parts.len() >= 3 && parts[..2].iter().all(|p| p.len() >= 6 && p.chars().all(|c| c.is_ascii_digit()))
}

/// `T…/B…/secret`: workspace and channel ids, then a 24-character secret.
fn slack_webhook_shape(body: &str) -> bool {
    let parts: Vec<&str> = body.split('/').collect();
    parts.len() == 3 && parts[0].starts_with('T') && parts[1].starts_with('B') && parts[2].len() >= 20
}

fn has_digit_and_letter(body: &str) -> bool {
    body.chars().any(|c| c.is_ascii_digit()) && body.chars().any(|c| c.is_ascii_alphabetic())
}

pub const RULES: &[Rule] = &[
    Rule {
        id: "aws-access-key-id",
        title: "AWS access key ID",
        severity: Severity::Critical,
        shape: Shape::Token {
            prefixes: &["AKIA", "ASIA", "ABIA", "ACCA"],
            alphabet: Alphabet::UpperDigits,
            min: 16,
            max: 16,
            check: any,
        },
    },
    Rule {
        id: "github-token",
        title: "GitHub token (personal, OAuth, app or refresh)",
        severity: Severity::Critical,
        shape: Shape::Token {
            prefixes: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            alphabet: Alphabet::AlphaNum,
            min: 36,
            max: 36,
            check: has_digit_and_letter,
        },
    },
    Rule {
        id: "github-fine-grained-pat",
        title: "GitHub fine-grained personal access token",
        severity: Severity::Critical,
        shape: Shape::Token {
            prefixes: &["github_pat_"],
            alphabet: Alphabet::AlphaNumUnderscore,
            min: 82,
            max: 82,
            check: has_digit_and_letter,
        },
    },
    Rule {
        id: "gitlab-token",
        title: "GitLab personal access token",
        severity: Severity::Critical,
        shape: Shape::Token {
            prefixes: &["glpat-"],
            alphabet: Alphabet::AlphaNumDashUnderscore,
            min: 20,
            max: 64,
            check: has_digit_and_letter,
        },
    },
    Rule {
        id: "slack-token",
        title: "Slack token",
        severity: Severity::High,
        shape: Shape::Token {
            prefixes: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-"],
            alphabet: Alphabet::AlphaNumDash,
            min: 24,
            max: 255,
            check: slack_token_shape,
        },
    },
    Rule {
        id: "slack-webhook",
        title: "Slack incoming webhook URL",
        severity: Severity::High,
        shape: Shape::Token {
            prefixes: &["https://hooks.slack.com/services/"],
            alphabet: Alphabet::SlackPath,
            min: 40,
            max: 120,
            check: slack_webhook_shape,
        },
    },
    Rule {
        id: "stripe-live-key",
        title: "Stripe live secret or restricted key",
        severity: Severity::Critical,
        shape: Shape::Token {
            prefixes: &["sk_live_", "rk_live_"],
            alphabet: Alphabet::AlphaNum,
            min: 24,
            max: 247,
            check: has_digit_and_letter,
        },
    },
    Rule {
        id: "stripe-test-key",
        title: "Stripe test-mode secret key",
        severity: Severity::Medium,
        shape: Shape::Token {
            prefixes: &["sk_test_", "rk_test_"],
            alphabet: Alphabet::AlphaNum,
            min: 24,
            max: 247,
            check: has_digit_and_letter,
        },
    },
    Rule {
        id: "google-api-key",
        title: "Google API key",
        severity: Severity::High,
        shape: Shape::Token {
            prefixes: &["AIza"],
            alphabet: Alphabet::AlphaNumDashUnderscore,
            min: 35,
            max: 35,
            check: any,
        },
    },
    Rule { id: "private-key", title: "PEM private key", severity: Severity::Critical, shape: Shape::PemPrivateKey },
    Rule {
        id: "generic-secret",
        title: "High-entropy value assigned to a secret-looking name",
        severity: Severity::High,
        shape: Shape::GenericAssignment,
    },
];

/// Whether `id` names one of the built-in rules.
pub fn is_rule(id: &str) -> bool {
    RULES.iter().any(|r| r.id == id.trim())
}

/// One match. `secret` stays in memory only: everything printed goes through [`redact`].
#[derive(Clone, Debug)]
pub struct Hit {
    pub rule: &'static Rule,
    pub line: usize,
    pub column: usize,
    pub secret: String,
}

/// Values that documentation and examples use; never real credentials.
fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "example",
        "changeme",
        "change_me",
        "placeholder",
        "dummy",
        "redacted",
        "your_",
        "your-",
        "xxxx",
        "0000",
        "1234",
    ];
    WORDS.iter().any(|w| lower.contains(w)) || ["${", "{{", "<", "$(", "%s", "***"].iter().any(|w| value.contains(w))
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    let mut n = 0usize;
    for b in s.bytes() {
        counts[b as usize] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n as f64).map(|p| -p * p.log2()).sum()
}

const GENERIC_KEYWORDS: &[&str] =
    &["secret", "token", "password", "passwd", "api_key", "apikey", "api-key", "access_key", "private_key", "auth_key"];
const GENERIC_MIN_LEN: usize = 16;
const GENERIC_MIN_ENTROPY: f64 = 3.5;

/// Scan one file's text with every rule.
pub fn scan_text(text: &str) -> Vec<Hit> {
    let lines: Vec<&str> = text.lines().collect();
    let mut hits = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for rule in RULES {
            match &rule.shape {
                Shape::Token { prefixes, alphabet, min, max, check } => {
                    for prefix in *prefixes {
                        for (col, secret) in find_tokens(line, prefix, *alphabet, *min, *max) {
                            let body = &secret[prefix.len()..];
                            if check(body) && !is_placeholder(&secret) {
                                hits.push(Hit { rule, line: i + 1, column: col + 1, secret });
                            }
                        }
                    }
                }
                Shape::PemPrivateKey => {
                    if let Some(col) = pem_header(line)
                        && lines.get(i + 1).is_some_and(|next| looks_like_key_material(next))
                    {
                        hits.push(Hit { rule, line: i + 1, column: col + 1, secret: lines[i + 1].trim().to_string() });
                    }
                }
                Shape::GenericAssignment => {
                    if let Some((col, value)) = generic_assignment(line) {
                        hits.push(Hit { rule, line: i + 1, column: col + 1, secret: value });
                    }
                }
            }
        }
    }
    // A token rule and the generic rule can both see one value: report it once, by the precise rule.
    let mut seen: Vec<(usize, String)> = Vec::new();
    hits.retain(|h| {
        let key = (h.line, h.secret.clone());
        if seen.iter().any(|s| s.0 == key.0 && (s.1.contains(&key.1) || key.1.contains(&s.1))) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    hits
}

fn find_tokens(line: &str, prefix: &str, alphabet: Alphabet, min: usize, max: usize) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = line[from..].find(prefix) {
        let start = from + pos;
        from = start + prefix.len();
        let before = line[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let body: String = line[from..].chars().take_while(|&c| alphabet.contains(c)).collect();
        if (min..=max).contains(&body.len()) {
            found.push((start, format!("{prefix}{body}")));
        }
    }
    found
}

fn pem_header(line: &str) -> Option<usize> {
    let begin = line.find("-----BEGIN ")?;
    let rest = &line[begin + "-----BEGIN ".len()..];
    let end = rest.find("-----")?;
    let label = &rest[..end];
    let is_private = label == "PRIVATE KEY"
        || label.ends_with(" PRIVATE KEY")
        || label == "PGP PRIVATE KEY BLOCK"
        || label == "OPENSSH PRIVATE KEY";
    is_private.then_some(begin)
}

fn looks_like_key_material(line: &str) -> bool {
    let t = line.trim().trim_matches(|c| c == '"' || c == '\'' || c == ',');
    t.starts_with("Proc-Type:") || (t.len() >= 40 && t.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)))
}

/// `api_token = "…"`, `"password": "…"`, `SECRET_KEY=…`: a secret-looking name, an assignment,
/// and a long, varied value.
fn generic_assignment(line: &str) -> Option<(usize, String)> {
    let lower = line.to_ascii_lowercase();
    for kw in GENERIC_KEYWORDS {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(kw) {
            let kw_start = from + pos;
            from = kw_start + kw.len();
            // Finish the identifier the keyword sits in (e.g. `db_password_prod`).
            let ident_end = from
                + lower[from..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').count();
            let mut rest = line[ident_end..].trim_start_matches(['"', '\'']).trim_start();
            rest = if let Some(r) = rest.strip_prefix(":=") {
                r
            } else if let Some(r) = rest.strip_prefix("=>") {
                r
            } else if let Some(r) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) {
                r
            } else {
                continue;
            };
            let rest = rest.trim_start();
            let (quoted, rest) = match rest.chars().next() {
                Some(q @ ('"' | '\'' | '`')) => (Some(q), &rest[1..]),
                _ => (None, rest),
            };
            let value: String = match quoted {
                Some(q) => rest.chars().take_while(|&c| c != q).collect(),
                None => rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ';' | ')' | '(' | '&' | '#'))
                    .collect(),
            };
            // Unquoted dotted or path values are code (`token = self.config.token`), not data.
            let code_like = quoted.is_none() && (value.contains('.') || value.contains("::"));
            if value.len() >= GENERIC_MIN_LEN
                && !code_like
                && has_digit_and_letter(&value)
                && entropy(&value) >= GENERIC_MIN_ENTROPY
                && !is_placeholder(&value)
                && !is_slug(&value)
            {
                let col = line.find(&value).unwrap_or(kw_start);
                return Some((col, value));
            }
        }
    }
    None
}

/// Names made of words (`argon2id-default-params`, `my-service-token`) rather than random text.
fn is_slug(value: &str) -> bool {
    value.split(['-', '_', '.', '/', ':']).filter(|w| w.len() >= 4 && w.chars().all(|c| c.is_ascii_lowercase())).count()
        >= 2
}

/// What may be shown of a secret: its first few characters, then stars.
pub fn redact(secret: &str) -> String {
    let keep = (secret.chars().count() / 4).min(4);
    let shown: String = secret.chars().take(keep).collect();
    format!("{shown}{}", "*".repeat(8))
}

/// A stable identifier of a secret value, for ignore entries, that does not reveal it.
pub fn fingerprint(secret: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in secret.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every sample is assembled at run time, so this file itself never contains a secret that
    // this scanner, trivy or a forge's push protection would flag.
    fn join(parts: &[&str]) -> String {
        parts.concat()
    }

    fn rules_hit(text: &str) -> Vec<&'static str> {
        scan_text(text).iter().map(|h| h.rule.id).collect()
    }

    fn true_positives() -> Vec<(&'static str, String)> {
        let pem_body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0";
        vec![
            ("aws-access-key-id", format!("aws_key = \"{}\"", join(&["AKIA", "Q3EGRJ7LXKPN5D2W"]))),
            ("github-token", format!("export GH={}", join(&["ghp_", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"]))),
            ("github-fine-grained-pat", join(&["github_pat_", "11ABCDEFG0", &"a1B2c3D4e5".repeat(6), "xYz0_Ab1c2D3"])),
            ("gitlab-token", format!("token: {}", join(&["glpat-", "Zx9Kq2Lm8Nw4Rt6Vy1Bc"]))),
            ("slack-token", join(&["xoxb-", "2837465019", "-", "1029384756102", "-", "Qw8Er7Ty6Ui5Op4As3Df2Gh"])),
            (
                "slack-webhook",
                join(&["https://hooks.slack.com/services/", "T02AB3CDE/B04FG5HIJ/", "kL6mN7oP8qR9sT0uV1wX2yZ3"]),
            ),
            ("stripe-live-key", format!("STRIPE={}", join(&["sk_live_", "51H8xQ2Lk9Jm3Np7Rt4Vw6Yz"]))),
            ("stripe-test-key", join(&["rk_test_", "51H8xQ2Lk9Jm3Np7Rt4Vw6Yz0a"])),
            ("google-api-key", format!("key={}", join(&["AIza", "SyD4k9Lm2Np8Qr6St1Uv3Wx5Yz7Ab0Cd9Ef"]))),
            ("private-key", format!("{}\n{pem_body}\n", join(&["-----BEGIN ", "RSA PRIVATE KEY", "-----"]))),
            ("generic-secret", format!("db_password = \"{}\"", join(&["Xk9#mQ2v", "Lr7$pW4nZt8b"]))),
            ("generic-secret", format!("\"api_key\": \"{}\",", join(&["9fT3kLq8", "ZmW2xR7vN4bP"]))),
            ("generic-secret", format!("SESSION_SECRET={}", join(&["u8Kd2Lq9", "Xw4Zr7Tb1Nm6"]))),
        ]
    }

    #[test]
    fn every_rule_finds_its_own_format() {
        for (rule, text) in true_positives() {
            assert_eq!(rules_hit(&text), vec![rule], "in {text:?}");
        }
        let covered: Vec<_> = true_positives().iter().map(|(r, _)| *r).collect();
        for rule in RULES {
            assert!(covered.contains(&rule.id), "rule {} has no true-positive test", rule.id);
        }
    }

    #[test]
    fn look_alikes_are_not_findings() {
        let negatives = [
            // AWS's documented example key.
            join(&["AKIA", "IOSFODNN7", "EXAMPLE"]),
            // Right prefix, wrong length or boundary.
            join(&["ghp_", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"]),
            join(&["xghp_", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"]),
            join(&["AKIA", "Q3EGRJ7LXKPN5D2WXYZ"]),
            join(&["sk_live_", "short1"]),
            join(&["xoxb-", "not-a-real-token-just-words"]),
            // A public key, and a private-key header with no key under it (docs, code).
            join(&[
                "-----BEGIN ",
                "PUBLIC KEY",
                "-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo",
            ]),
            join(&["let header = \"-----BEGIN ", "PRIVATE KEY", "-----\";\nlet body = decode(input);"]),
            // Generic: references, placeholders, low entropy, code.
            "password = \"${DB_PASSWORD}\"".to_string(),
            "api_key: \"<your-api-key-here>\"".to_string(),
            "token = \"aaaaaaaaaaaaaaaaaaaaaaaaa\"".to_string(),
            "secret_name = \"my-app-secret\"".to_string(),
            "let token = request.headers().get(AUTHORIZATION);".to_string(),
            "password_hash: \"argon2id-default-params\"".to_string(),
            "token: std::sync::Arc<TokenStore>,".to_string(),
            "POSTGRES_PASSWORD=changeme-in-your-env-file".to_string(),
        ];
        for text in negatives {
            assert!(rules_hit(&text).is_empty(), "false positive {:?} in {text:?}", rules_hit(&text));
        }
    }

    #[test]
    fn findings_carry_position() {
        let text = format!("line one\n    key: {}\n", join(&["AKIA", "Q3EGRJ7LXKPN5D2W"]));
        let hits = scan_text(&text);
        assert_eq!((hits[0].line, hits[0].column), (2, 10));
    }

    #[test]
    fn redaction_never_shows_more_than_four_characters() {
        let secret = join(&["AKIA", "Q3EGRJ7LXKPN5D2W"]);
        assert_eq!(redact(&secret), "AKIA********");
        assert_eq!(redact("abc"), "********");
        assert_ne!(fingerprint(&secret), fingerprint("other"));
        assert_eq!(fingerprint(&secret).len(), 16);
    }

    #[test]
    fn entropy_separates_random_from_repetitive() {
        assert!(entropy("aaaaaaaaaaaaaaaa") < 0.01);
        assert!(entropy("9fT3kLq8ZmW2xR7vN4bP") > 4.0);
    }
}
