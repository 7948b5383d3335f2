//! A component reaches its own database only: through its handle (the capability has no way
//! to name another) and at PostgreSQL's permission level (its role cannot connect elsewhere).

use micropay_tests::TestHost;
use sqlx::Connection;

#[tokio::test]
async fn a_component_cannot_reach_another_services_database() {
    let host = TestHost::start().await;

    // Capability level: from its own handle the probe sees none of the user service's tables,
    // cannot name another database, cannot load dblink, cannot read server files.
    let (status, outcome) = host.call("GET", "/v1/probe/foreign", None, None).await;
    assert_eq!(status, 200, "{outcome}");
    for (attempt, code) in [
        ("own_handle_users", "42P01"),
        ("qualified_users", "42P01"),
        ("cross_database", "0A000"),
        ("dblink", "42501"),
        ("read_file", "42501"),
    ] {
        assert_eq!(outcome[attempt]["reached"], false, "{attempt}: {outcome}");
        assert_eq!(outcome[attempt]["code"], code, "{attempt}: {outcome}");
    }

    // PostgreSQL level: the probe's own role is refused by another service's database, and by
    // the host's own: the embedded bus's (whose sessions keep their statements' plans, so no
    // component session may run beside them there) and the platform's.
    let url = micropay_tests::admin_url();
    let server = url.split('@').nth(1).unwrap().rsplit_once('/').unwrap().0;
    let probe_role = format!("{}micropay_probe", host.prefix);
    for database in ["user", "bus", "platform"] {
        let foreign = format!("postgres://{probe_role}@{server}/{}micropay_{database}_db", host.prefix);
        let err = sqlx::PgConnection::connect(&foreign)
            .await
            .expect_err(&format!("the probe role connected to the {database} database"));
        let code = err.as_database_error().and_then(|db| db.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{database}: {err}");
    }

    // ... while its own database accepts it (so the refusal above is about permission).
    let own = format!("postgres://{probe_role}@{server}/{}micropay_probe_db", host.prefix);
    sqlx::PgConnection::connect(&own).await.expect("the probe role reaches its own database");
}
