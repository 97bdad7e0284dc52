//! The API over TLS with a certificate no system store trusts (a private CA, or
//! self-signed): refused by default, trusted with `--ca-cert`, which `weft login` keeps in
//! the context.

use super::common::Api;

#[tokio::test]
async fn a_private_ca_is_trusted_with_ca_cert_and_kept_by_login() {
    let api = Api::start().await;
    let owner = api.tenant("acme", "owner").await;
    let dir = weft_testkit::tmp::dir("cli-tls");
    let (url, cert) = weft_testkit::server::serve_rest_tls(api.state.clone(), dir.path()).await;
    let cert = cert.to_str().expect("path");

    // Not trusted: the error says it is the certificate.
    let refused = api
        .weft(&["login", "--api-url", &url, "--token", &owner])
        .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );
    // A file that is not PEM is named.
    let bad = api
        .weft(&[
            "login",
            "--api-url",
            &url,
            "--token",
            &owner,
            "--ca-cert",
            "/dev/null",
        ])
        .await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("/dev/null"), "{}", bad.stderr);

    api.weft(&[
        "login",
        "--api-url",
        &url,
        "--token",
        &owner,
        "--ca-cert",
        cert,
    ])
    .await
    .ok();
    // The context keeps it: later commands trust the API without the flag.
    api.weft(&["cluster", "create", "prod"]).await.ok();
    let list = api.weft(&["cluster", "list", "-o", "json"]).await;
    list.ok();
    assert!(list.stdout.contains("\"prod\""), "{}", list.stdout);
    // So does the environment, for a one-off call.
    let env = api
        .weft_env(
            &["cluster", "list", "-o", "json"],
            &[
                ("WEFT_API_URL", url.as_str()),
                ("WEFT_TOKEN", owner.as_str()),
                ("WEFT_TENANT", "acme"),
                ("WEFT_CA_CERT", cert),
            ],
            None,
        )
        .await;
    env.ok();
    assert!(env.stdout.contains("\"prod\""), "{}", env.stdout);
}
