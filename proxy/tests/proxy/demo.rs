//! The embedded demo (the README's first command) works end to end: plaintext → outbound →
//! mTLS → inbound → app, with the verified identity in XFCC, and stops cleanly.

use crate::harness::within;
use crate::lifecycle::admin;

#[tokio::test]
async fn demo_mesh_answers_through_both_sidecars() {
    let demo = enclaveid_proxy::demo::start(enclaveid_proxy::demo::DemoPorts::from_base(0))
        .await
        .unwrap();
    let (status, body) = within(
        "demo request",
        admin(demo.outbound.outbound_addr(0), "GET", "/hello"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from the demo app"), "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"),
        "{body}"
    );
    assert_eq!(
        admin(demo.inbound.admin_addr(), "GET", "/ready").await.0,
        200
    );
    // The app itself, reached directly, shows that the identity only comes through the mesh.
    let (_, direct) = admin(demo.app, "GET", "/").await;
    assert!(direct.contains("not through the mesh"), "{direct}");
    demo.outbound.shutdown();
    demo.inbound.shutdown();
    within("demo outbound stops", demo.outbound.wait()).await;
    within("demo inbound stops", demo.inbound.wait()).await;
}
