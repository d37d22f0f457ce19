use super::*;

fn all() -> Vec<GatewayError> {
    let d = Duration::from_millis(1500);
    vec![
        GatewayError::BadRequest(BadRequest::DotSegment),
        GatewayError::Misdirected,
        GatewayError::UnknownHost,
        GatewayError::NoRoute,
        GatewayError::UnknownChallenge,
        GatewayError::MissingKey,
        GatewayError::MissingToken,
        GatewayError::InvalidKey,
        GatewayError::ExpiredKey,
        GatewayError::RevokedKey,
        GatewayError::WrongTenant,
        GatewayError::Forbidden(Forbidden::Mutation),
        GatewayError::UnsupportedMediaType(UnsupportedMedia::ContentType),
        GatewayError::BadRequest(BadRequest::GraphQl(BadGraphQl::Batch)),
        GatewayError::GraphQlTooLarge,
        GatewayError::RequestTimeout,
        GatewayError::AuthThrottled { retry_after: d },
        GatewayError::RateLimited { retry_after: d },
        GatewayError::LimiterUnavailable,
        GatewayError::PayloadTooLarge,
        GatewayError::HeadersTooLarge,
        GatewayError::UriTooLong,
        GatewayError::Upstream {
            kind: UpstreamFailure::Connect,
            source: "x".into(),
        },
        GatewayError::UpstreamTimeout,
        GatewayError::Internal("x".into()),
    ]
}

#[test]
fn status_code_outcome_table() {
    let table: Vec<(u16, &str, &str)> = all()
        .iter()
        .map(|e| (e.status().as_u16(), e.code(), e.outcome().as_str()))
        .collect();
    assert_eq!(
        table,
        vec![
            (400, "BAD_REQUEST", "bad_request"),
            (421, "MISDIRECTED_REQUEST", "misdirected"),
            (404, "NOT_FOUND", "unknown_host"),
            (404, "NOT_FOUND", "no_route"),
            (404, "NOT_FOUND", "unknown_challenge"),
            (401, "UNAUTHENTICATED", "missing_key"),
            (401, "UNAUTHENTICATED", "missing_key"),
            (401, "UNAUTHENTICATED", "invalid_key"),
            (401, "UNAUTHENTICATED", "expired_key"),
            (401, "UNAUTHENTICATED", "revoked_key"),
            (403, "FORBIDDEN", "wrong_tenant"),
            (403, "FORBIDDEN", "scope_denied"),
            (415, "UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type"),
            (400, "BAD_REQUEST", "bad_request"),
            (413, "PAYLOAD_TOO_LARGE", "payload_too_large"),
            (408, "REQUEST_TIMEOUT", "bad_request"),
            (429, "TOO_MANY_AUTH_FAILURES", "auth_throttled"),
            (429, "RATE_LIMITED", "rate_limited"),
            (503, "SERVICE_UNAVAILABLE", "limiter_unavailable"),
            (413, "PAYLOAD_TOO_LARGE", "payload_too_large"),
            (431, "BAD_REQUEST", "bad_request"),
            (414, "BAD_REQUEST", "bad_request"),
            (502, "BAD_GATEWAY", "upstream_error"),
            (504, "GATEWAY_TIMEOUT", "upstream_timeout"),
            (500, "INTERNAL", "internal"),
        ]
    );
}

#[test]
fn refused_keys_are_indistinguishable_to_clients() {
    let bodies: Vec<_> = [
        GatewayError::InvalidKey,
        GatewayError::ExpiredKey,
        GatewayError::RevokedKey,
    ]
    .iter()
    .map(|e| {
        let r = e.to_response(ErrorShape::Rest, "rid");
        (r.headers().clone(), r.into_body())
    })
    .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn shapes() {
    assert_eq!(ErrorShape::for_path("/graphql"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path("/metadata/x"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path("/rest/metadata"), ErrorShape::Rest);
    assert_eq!(ErrorShape::for_path("/graphqlx"), ErrorShape::Rest);
    assert_eq!(ErrorShape::for_path("/GraphQL"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path("/graphql;x=1"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path("///metadata?x"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path("graphql"), ErrorShape::GraphQl);
    assert_eq!(ErrorShape::for_path(""), ErrorShape::Rest);
    assert_eq!(ErrorShape::for_path("/"), ErrorShape::Rest);
    assert_eq!(ErrorShape::for_path("/graph"), ErrorShape::Rest);
    let r = GatewayError::RateLimited {
        retry_after: Duration::from_millis(1500),
    }
    .to_response(ErrorShape::GraphQl, "r\"1");
    assert_eq!(r.headers()[RETRY_AFTER], "2");
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(v["errors"][0]["extensions"]["requestId"], "r\"1");
}

#[test]
fn hand_written_bodies_are_what_serde_json_writes() {
    let ids = [
        "rid",
        "0123456789abcdef0123456789abcdef",
        "r\"1",
        "back\\slash",
        "tab\there",
        "nl\n\u{1}\u{1f}",
        "~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
        "",
        "é ünïcode ✓",
    ];
    for e in all() {
        let Row {
            status,
            code,
            message,
            ..
        } = e.row();
        for id in ids {
            let rest = serde_json::to_vec(&RestError {
                status_code: status.as_u16(),
                error: code,
                messages: [message],
                request_id: id,
            })
            .unwrap();
            assert_eq!(
                rest_body(status.as_u16(), code, message, id),
                rest,
                "{id:?}"
            );
            let gql = serde_json::to_vec(&GraphQlErrors {
                errors: [GraphQlError {
                    message,
                    extensions: Extensions {
                        code,
                        request_id: id,
                    },
                }],
            })
            .unwrap();
            assert_eq!(graphql_body(code, message, id), gql, "{id:?}");
        }
    }
    for n in [0u16, 7, 10, 99, 100, 404, 999, 1000, 65535] {
        assert_eq!(itoa_u16(n, &mut [0; 5]), n.to_string().as_bytes());
    }
}

/// Every code and message of the error table is written into JSON without
/// escaping ([`json_fields`]): none may need it. (Debug builds also check
/// each body as it is written.)
#[test]
fn error_table_strings_need_no_json_escaping() {
    use BadGraphQl as G;
    use BadRequest as B;
    let bad = [
        B::NotOriginForm,
        B::DotSegment,
        B::EmptySegment,
        B::EncodedSeparator,
        B::Backslash,
        B::Nul,
        B::BadPercentEncoding,
        B::NotUtf8,
        B::MissingHost,
        B::BadHost,
        B::MultipleAuthorization,
        B::Framing,
        B::Method,
    ]
    .into_iter()
    .chain(
        [
            G::QueryInUrl,
            G::BodyOnGet,
            G::Batch,
            G::NotObject,
            G::InvalidJson,
            G::DuplicateMember,
            G::MissingQuery,
            G::DuplicateParam,
            G::InvalidDocument,
        ]
        .map(B::GraphQl),
    )
    .map(GatewayError::BadRequest);
    let forbidden = [
        Forbidden::Api,
        Forbidden::Method,
        Forbidden::MethodOverride,
        Forbidden::Upgrade,
        Forbidden::Mutation,
    ]
    .map(GatewayError::Forbidden);
    let media = [
        UnsupportedMedia::ContentType,
        UnsupportedMedia::ContentEncoding,
    ]
    .map(GatewayError::UnsupportedMediaType);
    let mut n = 0;
    for e in all().into_iter().chain(bad).chain(forbidden).chain(media) {
        listed(&e);
        let Row { code, message, .. } = e.row();
        assert!(!json::needs_escape(code), "{code:?}");
        assert!(!json::needs_escape(message), "{message:?}");
        n += 1;
    }
    assert!(n > 50);
}

/// No `_` arms: a new variant does not compile until it is handled here;
/// list it in [`error_table_strings_need_no_json_escaping`] too.
fn listed(e: &GatewayError) {
    use BadGraphQl as G;
    use BadRequest as B;
    match e {
        GatewayError::BadRequest(b) => match b {
            B::NotOriginForm
            | B::DotSegment
            | B::EmptySegment
            | B::EncodedSeparator
            | B::Backslash
            | B::Nul
            | B::BadPercentEncoding
            | B::NotUtf8
            | B::MissingHost
            | B::BadHost
            | B::MultipleAuthorization
            | B::Framing
            | B::Method => {}
            B::GraphQl(
                G::QueryInUrl
                | G::BodyOnGet
                | G::Batch
                | G::NotObject
                | G::InvalidJson
                | G::DuplicateMember
                | G::MissingQuery
                | G::DuplicateParam
                | G::InvalidDocument,
            ) => {}
        },
        GatewayError::Forbidden(
            Forbidden::Api
            | Forbidden::Method
            | Forbidden::MethodOverride
            | Forbidden::Upgrade
            | Forbidden::Mutation,
        ) => {}
        GatewayError::UnsupportedMediaType(
            UnsupportedMedia::ContentType | UnsupportedMedia::ContentEncoding,
        ) => {}
        GatewayError::Misdirected
        | GatewayError::UnknownHost
        | GatewayError::NoRoute
        | GatewayError::UnknownChallenge
        | GatewayError::MissingKey
        | GatewayError::MissingToken
        | GatewayError::InvalidKey
        | GatewayError::ExpiredKey
        | GatewayError::RevokedKey
        | GatewayError::WrongTenant
        | GatewayError::AuthThrottled { .. }
        | GatewayError::RateLimited { .. }
        | GatewayError::LimiterUnavailable
        | GatewayError::PayloadTooLarge
        | GatewayError::GraphQlTooLarge
        | GatewayError::RequestTimeout
        | GatewayError::HeadersTooLarge
        | GatewayError::UriTooLong
        | GatewayError::Upstream { .. }
        | GatewayError::UpstreamTimeout
        | GatewayError::Internal(_) => {}
    }
}
