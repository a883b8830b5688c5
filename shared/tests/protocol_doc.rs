//! `docs/protocol.md` describes the protocol in the project's words; these
//! checks hold its byte-level statements to the code, so the page cannot
//! drift from what Baton sends (the code itself is held to the contract by
//! `vectors.rs`).

use baton_shared::crypto::{checkpoint_message, receipt_message};
use baton_shared::entry::MAX_CONTENT_BYTES;
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_OTHER_BYTES, MQTT_MAX_PACKET};
use baton_shared::{AgentId, Hash, Seq};

const DOC: &str = include_str!("../../docs/protocol.md");

/// Whether the page says `text` (line breaks and runs of spaces count as
/// one space, as a reader reads them).
fn says(text: &str) {
    let flat = DOC.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(text),
        "docs/protocol.md does not say {text:?}"
    );
}

#[test]
fn the_topic_shapes_and_every_suffix_are_as_documented() {
    says(&format!(
        "`{}/{{cluster}}/{{agent}}/{{suffix}}`",
        topic::ROOT
    ));
    assert_eq!(
        topic::agent("{cluster}", "{agent}", Kind::Hello),
        format!("{}/{{cluster}}/{{agent}}/hello", topic::ROOT)
    );
    says(&format!("`{}`", topic::summary("{cluster}")));
    let table: Vec<&str> = DOC.lines().filter(|l| l.starts_with("| `")).collect();
    for k in Kind::ALL {
        let cell = format!("`{}`", k.suffix());
        assert!(
            table
                .iter()
                .any(|row| row.split('|').nth(1).is_some_and(|c| c.contains(&cell))),
            "the topic table has no row for {cell}"
        );
    }
}

#[test]
fn the_signed_bytes_are_as_documented() {
    let agent = AgentId::new("pi-1").unwrap();
    let gateway = AgentId::new("gw-1").unwrap();
    let hash = Hash([7; 32]);
    says("`\"baton.checkpoint.v1\" 0 agent 0 seq(8, BE) hash(32)`");
    let m = checkpoint_message(&agent, Seq(5), &hash);
    let mut want = b"baton.checkpoint.v1\0pi-1\0".to_vec();
    want.extend_from_slice(&5u64.to_be_bytes());
    want.extend_from_slice(&hash.0);
    assert_eq!(m, want);
    says("`\"baton.receipt.v1\" 0 gateway 0 agent 0 seq(8, BE) hash(32)`");
    let m = receipt_message(&gateway, &agent, Seq(5), &hash);
    let mut want = b"baton.receipt.v1\0gw-1\0pi-1\0".to_vec();
    want.extend_from_slice(&5u64.to_be_bytes());
    want.extend_from_slice(&hash.0);
    assert_eq!(m, want);
    says("`\"baton.nack.v1\" 0 gateway 0 agent 0 nonce(16) reason 0 seq(8, BE)`");
    let nonce = baton_shared::Nonce([3; 16]);
    let m = baton_shared::crypto::nack_message(&gateway, &agent, &nonce, "fork", Seq(5));
    let mut want = b"baton.nack.v1\0gw-1\0pi-1\0".to_vec();
    want.extend_from_slice(&nonce.0);
    want.extend_from_slice(b"fork\0");
    want.extend_from_slice(&5u64.to_be_bytes());
    assert_eq!(m, want);
    says("`\"baton.time.v1\" 0 gateway 0 agent 0 id(8) t0(8, BE) t1(8, BE) t2(8, BE)`");
    let m = baton_shared::crypto::time_message(&gateway, &agent, &[4; 8], 1, 2, 3);
    let mut want = b"baton.time.v1\0gw-1\0pi-1\0".to_vec();
    want.extend_from_slice(&[4; 8]);
    for t in [1i64, 2, 3] {
        want.extend_from_slice(&t.to_be_bytes());
    }
    assert_eq!(m, want);
    says("`\"baton.command.v1\" 0 sender 0 recipient 0 command_hash(32)`");
    let m = baton_shared::command::delivery_message(&gateway, &agent, &hash);
    let mut want = b"baton.command.v1\0gw-1\0pi-1\0".to_vec();
    want.extend_from_slice(&hash.0);
    assert_eq!(m, want);
    says("`\"baton.login.v1\" 0 client_id 0 counter(8, BE)`");
    let m = baton_shared::login::login_message("pi-1", 7);
    let mut want = b"baton.login.v1\0pi-1\0".to_vec();
    want.extend_from_slice(&7i64.to_be_bytes());
    assert_eq!(m, want);
}

#[test]
fn the_limits_are_as_documented() {
    says(&format!("a content ≤ {} KiB", MAX_CONTENT_BYTES / 1024));
    says(&format!("a batch ≤ {} KiB", MAX_BATCH_BYTES / 1024));
    let entries = MAX_BATCH_ENTRIES.to_string();
    let (thousands, rest) = entries.split_at(entries.len() - 3);
    says(&format!("≤ {thousands},{rest} entries"));
    says(&format!("anything else ≤ {} KiB", MAX_OTHER_BYTES / 1024));
    says(&format!(
        "`cmd` ≤ {} KiB",
        baton_shared::wire::MAX_CMD_BYTES / 1024
    ));
    says(&format!(
        "payload over {} KiB canonical",
        baton_shared::command::MAX_PAYLOAD_BYTES / 1024
    ));
    says(&format!(
        "MQTT packets up to {} KiB",
        MQTT_MAX_PACKET / 1024
    ));
}
