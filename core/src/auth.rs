//! Bearer-token checks shared by every HTTP role.

use subtle::ConstantTimeEq;

/// The outcome of checking a request's credentials against the configured tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// No tokens are configured, or the presented token matches one of them.
    Allowed,
    /// Tokens are configured and the request carries none (HTTP 401).
    Missing,
    /// The request carries a token that matches none of the configured ones (HTTP 403).
    Denied,
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks an `Authorization` header value against `tokens`.
///
/// Every configured token is compared, in constant time, whatever matched
/// earlier, so the answer time does not reveal how much of a token was right.
pub fn check_bearer(header: Option<&str>, tokens: &[String]) -> AuthDecision {
    if tokens.is_empty() {
        return AuthDecision::Allowed;
    }
    let Some(presented) = bearer_token(header) else {
        return AuthDecision::Missing;
    };
    let matched = tokens.iter().fold(0u8, |acc, token| {
        acc | presented.as_bytes().ct_eq(token.as_bytes()).unwrap_u8()
    });
    if matched == 1 {
        AuthDecision::Allowed
    } else {
        AuthDecision::Denied
    }
}

/// The tokens in a text (a Secret's value, a mounted token file): separated
/// by newlines, commas or spaces, as tokens never hold those.
///
/// A text that names no token is refused rather than read as "no
/// authentication": it is what an empty or truncated Secret looks like, and
/// failing closed beats a gateway that silently accepts everyone.
pub fn tokens_from_text(text: &str) -> Result<Vec<String>, &'static str> {
    let tokens: Vec<String> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(
            "the tokens text holds no token (an empty Secret?); put at least one token in it, \
             or remove the key to run without authentication",
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<String> {
        vec!["alpha".into(), "beta".into()]
    }

    #[test]
    fn no_configured_tokens_allows_everyone() {
        assert_eq!(check_bearer(None, &[]), AuthDecision::Allowed);
    }

    #[test]
    fn any_configured_token_is_accepted() {
        assert_eq!(
            check_bearer(Some("Bearer beta"), &tokens()),
            AuthDecision::Allowed
        );
        assert_eq!(
            check_bearer(Some("bearer alpha"), &tokens()),
            AuthDecision::Allowed
        );
    }

    #[test]
    fn missing_or_other_scheme_is_401_and_wrong_token_is_403() {
        assert_eq!(check_bearer(None, &tokens()), AuthDecision::Missing);
        assert_eq!(
            check_bearer(Some("Basic YWxhZGRpbg=="), &tokens()),
            AuthDecision::Missing
        );
        assert_eq!(
            check_bearer(Some("Bearer alph"), &tokens()),
            AuthDecision::Denied
        );
        assert_eq!(
            check_bearer(Some("Bearer alphaa"), &tokens()),
            AuthDecision::Denied
        );
    }
}
