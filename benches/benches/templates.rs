//! How long a template bomb takes to be refused: a key referencing the next eight times per
//! level, seven levels deep, over a ~1 MB value (8^7 MB if resolved naively). Issue 23 asks for
//! the refusal within 50 ms; the resolution stops as soon as the output passes the 1 MiB value
//! limit, so it costs about one value's worth of copying.
//!
//! `cargo bench -p meridian-benches --bench templates`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_protocol::view::{Renderer, TemplateError};
use meridian_protocol::{Address, CacheState, Change, Delta, Revision, Version};

fn bomb() -> CacheState {
    let mut changes = vec![Change {
        address: Address::parse("bomb", "prod", "l7").expect("valid"),
        version: Version(1),
        value: Some(format!("\"{}\"", "x".repeat(1_000_000)).into()),
    }];
    for level in 0..7 {
        changes.push(Change {
            address: Address::parse("bomb", "prod", &format!("l{level}")).expect("valid"),
            version: Version(1),
            value: Some(format!("\"{}\"", format!("${{l{}}}", level + 1).repeat(8)).into()),
        });
    }
    let mut state = CacheState::new();
    state.apply_delta(&Delta {
        revision: Revision(1),
        changes,
    });
    state
}

fn refusal(c: &mut Criterion) {
    let state = bomb();
    let text = state
        .get_live("bomb", "prod", "l0")
        .and_then(|e| e.value.clone())
        .expect("l0 is stored");
    c.bench_function("template bomb refused (8 refs x 7 levels over 1 MB)", |b| {
        b.iter(|| {
            let mut r = Renderer::new(&state, "bomb", "prod");
            let refused = r.render("l0", black_box(&text));
            assert!(matches!(refused, Err(TemplateError::TooLarge { .. })));
        })
    });
}

criterion_group! {
    name = templates;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = refusal
}
criterion_main!(templates);
