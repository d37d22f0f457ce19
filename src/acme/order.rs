//! One ACME order for one name with one challenge type: order, answer the
//! challenge, wait for validation, finalize with a fresh key, download.

use std::fmt;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus, Problem, RetryPolicy,
};

use super::challenge::Challenges;
use super::store::{ChallengeKey, Store, StoredCert};

/// How the CA validates control of the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// RFC 8737, on the HTTPS listener.
    TlsAlpn01,
    /// RFC 8555 §8.3, on the HTTP listener.
    Http01,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::TlsAlpn01 => "tls-alpn-01",
            Method::Http01 => "http-01",
        }
    }

    fn challenge_type(self) -> ChallengeType {
        match self {
            Method::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Method::Http01 => ChallengeType::Http01,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order did not produce a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The CA's problem detail, or what went wrong on our side.
    pub detail: String,
    /// The CA could not validate the name with this method (another method
    /// may succeed); `false`: the CA refused or could not be reached.
    pub validation: bool,
    /// The CA's problem type (`urn:ietf:params:acme:error:…`), if it sent one.
    pub problem_type: Option<String>,
}

impl Failure {
    pub(crate) fn ca(e: instant_acme::Error) -> Self {
        let problem_type = match &e {
            instant_acme::Error::Api(p) => p.r#type.clone(),
            _ => None,
        };
        Failure {
            detail: describe(&e),
            validation: false,
            problem_type,
        }
    }

    fn validation(detail: String) -> Self {
        Failure {
            detail,
            validation: true,
            problem_type: None,
        }
    }

    pub(crate) fn local(detail: String) -> Self {
        Failure {
            detail,
            validation: false,
            problem_type: None,
        }
    }

    /// The CA no longer knows the account (it was deactivated, or the CA
    /// lost its state): a new one must be created.
    pub fn account_gone(&self) -> bool {
        self.problem_type
            .as_deref()
            .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// An instant-acme error as one line: the CA's problem (type and detail) or
/// the transport error with its causes.
pub(crate) fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => describe_problem(p),
        other => {
            let mut s = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                source = cause.source();
            }
            s
        }
    }
}

fn describe_problem(p: &Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        s.push_str(" (");
        s.push_str(t);
        s.push(')');
    }
    for sub in &p.subproblems {
        if let Some(d) = &sub.detail {
            s.push_str("; ");
            s.push_str(d);
        }
    }
    s
}

/// What an order needs from the manager.
pub(crate) struct Ctx<'a> {
    pub account: &'a Account,
    pub challenges: &'a Challenges,
    pub store: &'a dyn Store,
    /// How long to wait for validation, and again for issuance.
    pub poll_timeout: Duration,
}

/// Removes a local challenge answer when the order is over, however it ends.
struct Answer<'a> {
    challenges: &'a Challenges,
    key: ChallengeKey,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        match &self.key {
            ChallengeKey::Http01 { token } => self.challenges.remove_http01(token),
            ChallengeKey::TlsAlpn01 { name } => self.challenges.remove_tls_alpn01(name),
        }
    }
}

/// Order a certificate for `name`, proving control with `method`.
pub(crate) async fn order(
    ctx: &Ctx<'_>,
    name: &str,
    method: Method,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<StoredCert, Failure> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(replaces) = replaces {
        new_order = new_order.replaces(replaces);
    }
    let mut order = ctx
        .account
        .new_order(&new_order)
        .await
        .map_err(Failure::ca)?;

    let mut answers = Vec::new();
    let result = validate(ctx, name, method, &mut order, &mut answers).await;
    // The CA is done with the answers whatever the outcome.
    for answer in answers.drain(..) {
        if let Err(e) = ctx.store.remove_challenge(&answer.key).await {
            tracing::warn!(event = "acme_store_error", name, error = %e, "cannot withdraw a challenge answer");
        }
    }
    result?;

    let key = rcgen::KeyPair::generate().map_err(|e| Failure::local(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| Failure::local(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Failure::local(e.to_string()))?;
    order.finalize_csr(csr.der()).await.map_err(Failure::ca)?;
    let chain_pem = order
        .poll_certificate(&retry(ctx.poll_timeout))
        .await
        .map_err(Failure::ca)?;
    Ok(StoredCert {
        key_pem: key.serialize_pem(),
        chain_pem,
    })
}

fn retry(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(200))
        .backoff(1.5)
        .timeout(timeout)
}

/// Answer every pending authorization with `method` and wait until the order
/// is ready to finalize.
async fn validate<'c>(
    ctx: &Ctx<'c>,
    name: &str,
    method: Method,
    order: &mut Order,
    answers: &mut Vec<Answer<'c>>,
) -> Result<(), Failure> {
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(Failure::ca)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Failure::validation(format!(
                        "the CA reports the authorization {other:?}"
                    )));
                }
            }
            let Some(mut challenge) = authz.challenge(method.challenge_type()) else {
                return Err(Failure::validation(format!(
                    "the CA offers no {method} challenge"
                )));
            };
            let key_authorization = challenge.key_authorization();
            let key = match method {
                Method::TlsAlpn01 => {
                    ctx.challenges
                        .add_tls_alpn01(name, key_authorization.digest().as_ref())
                        .map_err(Failure::local)?;
                    ChallengeKey::TlsAlpn01 {
                        name: name.to_string(),
                    }
                }
                Method::Http01 => {
                    ctx.challenges
                        .add_http01(&challenge.token, key_authorization.as_str());
                    ChallengeKey::Http01 {
                        token: challenge.token.clone(),
                    }
                }
            };
            answers.push(Answer {
                challenges: ctx.challenges,
                key: key.clone(),
            });
            // Not shared (Redis down): this gateway still answers; a CA
            // reaching another one fails validation and the order is retried.
            if let Err(e) = ctx
                .store
                .put_challenge(&key, key_authorization.as_str())
                .await
            {
                tracing::warn!(event = "acme_store_error", name, error = %e, "cannot publish the challenge answer; only this gateway can answer it");
            }
            challenge.set_ready().await.map_err(Failure::ca)?;
        }
    }

    match order.poll_ready(&retry(ctx.poll_timeout)).await {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(OrderStatus::Invalid) => Err(Failure::validation(why_invalid(order).await)),
        Ok(other) => Err(Failure::local(format!(
            "order ended polling in state {other:?}"
        ))),
        // The order carries an error: validation failed.
        Err(instant_acme::Error::Api(problem)) => {
            Err(Failure::validation(describe_problem(&problem)))
        }
        Err(e) => Err(Failure::ca(e)),
    }
}

/// The problem the CA recorded on the failed challenge(s).
async fn why_invalid(order: &mut Order) -> String {
    let mut problems = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                problems.push(describe_problem(p));
            }
        }
    }
    if problems.is_empty() {
        "the CA marked the order invalid without a problem detail".into()
    } else {
        problems.join("; ")
    }
}
