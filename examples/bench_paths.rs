//! The component's hot paths, each beside the raw library cost measured in
//! the same run (absolute times on a shared machine are noisy, ratios less
//! so):
//!
//! - commit acceptance through `Service::handle_iq` (parse, validation
//!   against the cached public state, the durable epoch compare-and-swap
//!   with the state blob, the GroupInfo check, archive, fan-out to every
//!   member device) against openmls `PublicGroup` alone (process + merge,
//!   in memory) on the same commits;
//! - the DS's group state blob against openmls' own JSON storage of the
//!   same `PublicGroup`;
//! - commits per second of 16 groups committing at once against one group
//!   committing alone;
//! - KeyPackage uploads through the service against raw Ed25519
//!   verification of the packages' two signatures;
//! - the CPU time of a refused KeyPackage upload (duplicates of stored
//!   packages, more packages than the device has room for) against an
//!   accepted one, and against the verify-first order (every signature
//!   checked before the store refuses), measured as the packages'
//!   `keypackages::verify`;
//! - KeyPackage claims through the service against a bare SQLite
//!   `DELETE … RETURNING` per transaction with the same durability;
//! - a 50-item MAM page from the middle and the end of a growing archive,
//!   against the same page at the smallest size;
//! - stored bytes per message and per KeyPackage against the MLS object;
//! - peak RSS of the idle `xmpp-mls serve` binary on a full store against
//!   an empty one;
//! - with `XMPP_BENCH_POSTGRES` (a PostgreSQL server's connection string;
//!   scripts/bench starts a private one): commit acceptance and commits per
//!   second on PostgreSQL against SQLite, and over 2 and 3 instances on one
//!   database against one.
//!
//! `cargo run --release --example bench_paths -- [--quick] [--json PATH] [--only SECTION]`
//! (sections: commits, concurrency, keypackages, refusals, archive, rss, postgres) prints one line per
//! figure, `name: value unit (ratio vs baseline)`, each a median of several
//! runs; `--json` also writes them as `{"bench", "quick", "figures": [{"name",
//! "value", "unit", "ratio", "baseline"}]}`.

#[path = "common/bench.rs"]
mod bench;
#[path = "common/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use minidom::Element;
use openmls::group::{ProposalStore, PublicGroup};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{KeyPackage, MlsMessageOut, RatchetTreeIn};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::SignatureScheme;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Serialize, VLBytes};
use xmpp_mls::config::Config;
use xmpp_mls::protocol::address::directory_node;
use xmpp_mls::protocol::devices::Device;
use xmpp_mls::protocol::keypackages::{key_package_element, parse_claimed, verify, Claim, ClaimOutcome, Policy, NODE};
use xmpp_mls::protocol::mam::{query_element, Cursor};
use xmpp_mls::protocol::mls;
use xmpp_mls::protocol::pubsub::publish_request;
use xmpp_mls::service::{IqKind, IqRequest, Response, Service};
use xmpp_mls::store::state::StateCodec;
use xmpp_mls::store::{AppendOutcome, ArchiveBudget, FeedEntry, Filter, Member, PageStart, Source, Store};
use xmpp_parsers::jid::{BareJid, Jid};

use bench::*;

/// Plaintext of a benchmark chat message: a typical line of text.
const CHAT_LINE: usize = 100;

/// What the run covers: `--quick` keeps it under two minutes.
struct Plan {
    group_sizes: Vec<usize>,
    commits: usize,
    uploaders: usize,
    /// Uploads of each kind whose CPU time is measured.
    refusals: usize,
    archive_sizes: Vec<usize>,
    runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        match quick {
            true => Plan {
                group_sizes: vec![2, 32, 256],
                commits: 5,
                uploaders: 50,
                refusals: 20,
                archive_sizes: vec![10_000, 100_000],
                runs: 3,
            },
            false => Plan {
                group_sizes: vec![2, 8, 32, 128, 256, 512, 1024],
                commits: 9,
                uploaders: 100,
                refusals: 100,
                archive_sizes: vec![10_000, 100_000, 1_000_000],
                runs: 5,
            },
        }
    }
}

/// Requests handled as the component handles stanzas: each in its own
/// task, at most `limits.max_in_flight` (256) at once; answers in order.
async fn handle_all(service: &Arc<Service>, requests: Vec<IqRequest>) -> Vec<Response> {
    let tasks = futures::stream::iter(requests).map(|req| {
        let service = service.clone();
        tokio::spawn(async move { handle(&service, req).await })
    });
    tasks.buffered(256).map(|r| r.expect("request task")).collect().await
}

fn directory_jid(account: &BareJid) -> String {
    format!("{}@{DOMAIN}", directory_node(account))
}

/// Commit acceptance per group size, every device on the live feed.
async fn bench_commits(plan: &Plan, figures: &mut Vec<Figure>) {
    for &size in &plan.group_sizes {
        let dir = tempfile::tempdir().unwrap();
        let (ours, raw) = commit_times(&Backend::Sqlite, dir.path(), size, plan.commits, Some(&mut *figures)).await;
        figures.push(Figure::new(format!("commit_accept_{size}"), ours, "ms", ours / raw, "openmls PublicGroup"));
    }
}

/// The median milliseconds of accepting a commit in a group of `size`
/// through the service on `backend`, and of openmls `PublicGroup` alone on
/// the same commits; with `state`, also the state's size figure.
async fn commit_times(backend: &Backend, dir: &Path, size: usize, commits: usize, state: Option<&mut Vec<Figure>>) -> (f64, f64) {
    let extra = "[limits]\nmax_payload_size = 16777216\nmax_stanza_out = 17825792\n";
    let (service, store) = service_on(&backend.new_store(dir), extra);
    let people: Vec<Person> = (0..size).map(|i| Person::new("m", i)).collect();
    publish(&store, &people).await;
    let id: [u8; 16] = rand::random();
    let mut group = create_group(&service, &people, id).await;
    for p in &people {
        let entry = FeedEntry { device_id: p.device_id.clone(), full_jid: p.jid().to_string(), account: p.account.to_string() };
        joined(&store, &id, entry).await;
    }
    let owner = &people[0];
    let info = group.export_group_info(owner.provider.crypto(), &owner.signer, true).unwrap();
    let (gi, tree) = mls::group_info(&bytes(&info), &id).unwrap();
    let tree = tree.expect("the tree inline");
    let storage = MemoryStorage::default();
    let (mut pg, _) =
        PublicGroup::from_external(owner.provider.crypto(), &storage, tree.clone(), gi.clone(), ProposalStore::new()).unwrap();
    if let Some(figures) = state {
        state_size(&storage, owner.provider.crypto(), tree, gi, size, figures);
    }
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    // One unmeasured commit first: caches, and a tree as commits leave it.
    for i in 0..=commits {
        let bundle = self_update(&mut group, owner, true);
        let t = Instant::now();
        public_group_apply(&mut pg, owner.provider.crypto(), &storage, &bundle.commit, &id);
        let raw_time = t.elapsed();
        let req = iq(&owner.jid(), group_jid(&id), IqKind::Set, bundle.to_element());
        let t = Instant::now();
        let response = handle(&service, req).await;
        let our_time = t.elapsed();
        assert_eq!(response.copies.map(|c| c.len()), Some(size), "one copy per device on the feed");
        group.merge_pending_commit(&owner.provider).unwrap();
        if i > 0 {
            ours.push(ms(our_time));
            raw.push(ms(raw_time));
        }
    }
    store.close().await;
    (median(ours), median(raw))
}

/// The DS's stored state of a group of `size` against openmls' own JSON
/// storage of the same PublicGroup.
fn state_size(json: &MemoryStorage, crypto: &impl OpenMlsCrypto, tree: RatchetTreeIn, gi: VerifiableGroupInfo, size: usize, figures: &mut Vec<Figure>) {
    let json_bytes: usize = json.values.read().unwrap().values().map(Vec::len).sum();
    let codec = StateCodec::default();
    PublicGroup::from_external(crypto, &codec, tree, gi, ProposalStore::new()).unwrap();
    let blob = codec.blob().unwrap().len() as f64;
    figures.push(Figure::new(format!("group_state_bytes_{size}"), blob, "bytes", blob / json_bytes as f64, "openmls JSON storage"));
}

/// Commits per second of 16 groups committing at once (each commit of a
/// round in its own task) against one group committing alone: the store's
/// writer decides, validation runs beside it.
async fn bench_concurrent_commits(plan: &Plan, figures: &mut Vec<Figure>) {
    let alone = commit_rate(&Backend::Sqlite, 1, 1, plan.commits * 4).await;
    let together = commit_rate(&Backend::Sqlite, GROUPS, 1, plan.commits * 4).await;
    figures.push(Figure::new(format!("commits_per_s_{GROUPS}_groups"), together, "commits/s", together / alone, "one group alone"));
}

/// Groups committing at once in [`commit_rate`].
const GROUPS: usize = 16;

/// Commits per second of `groups` groups of 8 committing at once for
/// `rounds` rounds, on `instances` services that share one store (each
/// with its own pool and cache, as instances do; group g is served by
/// instance g mod `instances`, as ejabberd's `bare_destination` pins it).
async fn commit_rate(backend: &Backend, groups: usize, instances: usize, rounds: usize) -> f64 {
    const SIZE: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let section = backend.new_store(dir.path());
    let services: Vec<(Arc<Service>, Store)> = (0..instances).map(|_| service_on(&section, "")).collect();
    let store = &services[0].1;
    let mut all = Vec::new();
    for g in 0..groups {
        let people: Vec<Person> = (0..SIZE).map(|i| Person::new(&format!("c{g}x"), i)).collect();
        publish(store, &people).await;
        let id: [u8; 16] = rand::random();
        let group = create_group(&services[0].0, &people, id).await;
        all.push((people, group));
    }
    let mut busy = Duration::ZERO;
    for _ in 0..rounds {
        let requests = all.iter_mut().enumerate().map(|(g, (people, group))| {
            let id = group.group_id().as_slice().to_vec();
            let req = iq(&people[0].jid(), group_jid(&id), IqKind::Set, self_update(group, &people[0], true).to_element());
            let service = services[g % instances].0.clone();
            tokio::spawn(async move { handle(&service, req).await })
        });
        let requests: Vec<_> = requests.collect();
        let t = Instant::now();
        for r in join_all(requests).await {
            r.unwrap();
        }
        busy += t.elapsed();
        for (people, group) in &mut all {
            group.merge_pending_commit(&people[0].provider).unwrap();
        }
    }
    for (_, store) in &services {
        store.close().await;
    }
    (groups * rounds) as f64 / busy.as_secs_f64()
}

/// The PostgreSQL store against SQLite in the same run: commit acceptance
/// in a group of 8 and of 128, commits per second of 16 groups, and of 16
/// groups over 2 and 3 instances on one database against one instance.
async fn bench_postgres(plan: &Plan, server: &str, figures: &mut Vec<Figure>) {
    let pg = Backend::Postgres(server.to_owned());
    for size in [8, 128] {
        let dir = tempfile::tempdir().unwrap();
        let (sqlite, _) = commit_times(&Backend::Sqlite, dir.path(), size, plan.commits, None).await;
        let (postgres, _) = commit_times(&pg, dir.path(), size, plan.commits, None).await;
        figures.push(Figure::new(format!("pg_commit_accept_{size}"), postgres, "ms", postgres / sqlite, "SQLite, same run"));
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = admission_time(&Backend::Sqlite, dir.path(), plan.commits * 20).await;
    let postgres = admission_time(&pg, dir.path(), plan.commits * 20).await;
    figures.push(Figure::new("pg_admission", postgres, "ms", postgres / sqlite, "SQLite, same run"));
    let rounds = plan.commits * 4;
    let sqlite = commit_rate(&Backend::Sqlite, GROUPS, 1, rounds).await;
    let one = commit_rate(&pg, GROUPS, 1, rounds).await;
    figures.push(Figure::new(format!("pg_commits_per_s_{GROUPS}_groups"), one, "commits/s", one / sqlite, "SQLite, same run"));
    for instances in [2, 3] {
        let rate = commit_rate(&pg, GROUPS, instances, rounds).await;
        let name = format!("pg_commits_per_s_{GROUPS}_groups_{instances}_instances");
        figures.push(Figure::new(name, rate, "commits/s", rate / one, "one instance, same run"));
    }
}

/// Median time of a stanza's admission (its account's rate-limit token:
/// SQLite's in-memory bucket, or PostgreSQL's shared row), over `n`
/// stanzas of as many accounts.
async fn admission_time(backend: &Backend, dir: &Path, n: usize) -> f64 {
    let (service, _store) = service_on(&backend.new_store(dir), "");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let from = Jid::new(&format!("a{}@example.org/d", i % 64)).unwrap();
        let t = Instant::now();
        service.admit(&from).await.unwrap();
        times.push(ms(t.elapsed()));
    }
    median(times)
}

/// Signature-input of an RFC 9420 SignWithLabel.
fn sign_content(label: &str, content: &[u8]) -> Vec<u8> {
    let mut out = VLBytes::new(format!("MLS 1.0 {label}").into_bytes()).tls_serialize_detached().unwrap();
    out.extend(VLBytes::new(content.to_vec()).tls_serialize_detached().unwrap());
    out
}

/// The two signatures of a KeyPackage (its own and its leaf node's), as
/// (signed content, signature), for a bare Ed25519 check.
fn signatures(kp: &KeyPackage, message: &[u8]) -> [(Vec<u8>, Vec<u8>); 2] {
    // A signature is the last field, a 64-byte vector (2-byte length).
    let split = |encoded: &[u8]| {
        let at = encoded.len() - 66;
        (encoded[..at].to_vec(), encoded[at + 2..].to_vec())
    };
    let (kp_tbs, kp_sig) = split(&message[4..]); // after version and wire format
    let (leaf_tbs, leaf_sig) = split(&kp.leaf_node().tls_serialize_detached().unwrap());
    [(sign_content("KeyPackageTBS", &kp_tbs), kp_sig), (sign_content("LeafNodeTBS", &leaf_tbs), leaf_sig)]
}

/// Per-second rate of `n` items done by `f` on every core.
fn parallel_rate<T: Sync>(items: &[T], f: impl Fn(&T) + Sync) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for chunk in items.chunks(items.len().div_ceil(threads)) {
            s.spawn(|| chunk.iter().for_each(&f));
        }
    });
    items.len() as f64 / t.elapsed().as_secs_f64()
}

/// Bytes the store's file would have with its free pages reclaimed.
async fn used_bytes(store: &Store) -> f64 {
    store.used_bytes().await.unwrap() as f64
}

/// Uploads (verify + store) and then claims of the same packages, through
/// the service, concurrently as on a busy service; and stored bytes per package.
async fn bench_key_packages(plan: &Plan, figures: &mut Vec<Figure>) {
    const PER_UPLOAD: usize = 20;
    let people: Vec<Person> = (0..plan.uploaders).map(|i| Person::new("k", i)).collect();
    let uploads: Vec<Vec<(KeyPackage, Vec<u8>)>> = people
        .iter()
        .map(|p| {
            (0..PER_UPLOAD)
                .map(|_| {
                    let kp = p.key_package();
                    let m = bytes(&MlsMessageOut::from(kp.clone()));
                    (kp, m)
                })
                .collect()
        })
        .collect();
    let total = plan.uploaders * PER_UPLOAD;
    let checks: Vec<_> = people
        .iter()
        .zip(&uploads)
        .flat_map(|(p, u)| u.iter().map(|(kp, m)| (p.signer.to_public_vec(), signatures(kp, m))))
        .collect();
    let crypto = OpenMlsRustCrypto::default();
    let verify = |(key, sigs): &(Vec<u8>, [(Vec<u8>, Vec<u8>); 2])| {
        for (content, sig) in sigs {
            crypto.crypto().verify_signature(SignatureScheme::ED25519, content, key, sig).unwrap();
        }
    };
    let (mut up, mut raw_up, mut claims, mut raw_claims, mut stored) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..plan.runs {
        raw_up.push(parallel_rate(&checks, verify));
        let dir = tempfile::tempdir().unwrap();
        let (service, store) = service(dir.path(), "[directory]\nclaim_burst = 1000000\n");
        publish(&store, &people).await;
        let before = used_bytes(&store).await;
        let requests = people.iter().zip(&uploads).map(|(p, u)| {
            let items = u.iter().map(|(_, m)| (None, key_package_element(m))).collect();
            iq(&p.jid(), directory_jid(&p.account), IqKind::Set, publish_request(NODE, items))
        });
        let requests = requests.collect();
        let t = Instant::now();
        handle_all(&service, requests).await;
        up.push(total as f64 / t.elapsed().as_secs_f64());
        let message_bytes: usize = uploads.iter().flatten().map(|(_, m)| m.len()).sum();
        stored.push((used_bytes(&store).await - before) / message_bytes as f64);

        // Each claim from its own claimer: one package of the account's one device.
        let requests = (0..total).map(|i| {
            let claimer = Jid::new(&format!("c{i}@example.org/x")).unwrap();
            let account = &people[i % people.len()].account;
            iq(&claimer, directory_jid(account), IqKind::Set, Claim::default().to_element())
        });
        let requests = requests.collect();
        let t = Instant::now();
        let responses = handle_all(&service, requests).await;
        claims.push(total as f64 / t.elapsed().as_secs_f64());
        for r in responses {
            let outcomes = parse_claimed(&r.payload.unwrap()).unwrap();
            assert!(matches!(outcomes[..], [ClaimOutcome::Claimed { last_resort: false, .. }]), "{outcomes:?}");
        }
        store.close().await;
        raw_claims.push(xmpp_mls::store::baseline::bare_claims_per_second(dir.path(), uploads.iter().flatten().map(|(_, m)| m.as_slice())).unwrap());
    }
    let (up, raw_up) = (median(up), median(raw_up));
    figures.push(Figure::new("keypackage_uploads", up, "/s", up / raw_up, "raw Ed25519 verify"));
    let (claims, raw_claims) = (median(claims), median(raw_claims));
    figures.push(Figure::new("keypackage_claims", claims, "/s", claims / raw_claims, "SQLite DELETE RETURNING per transaction"));
    let stored = median(stored);
    let per_kp = uploads.iter().flatten().map(|(_, m)| m.len()).sum::<usize>() as f64 / total as f64;
    figures.push(Figure::new("stored_bytes_per_keypackage", stored * per_kp, "bytes", stored, "KeyPackage"));
}

/// CPU seconds of this process while `work` runs.
async fn cpu_of(work: impl std::future::Future<Output = ()>) -> f64 {
    let cpu = || cpu::cpu_secs(std::process::id()).expect("/proc/self/task");
    let before = cpu();
    work.await;
    cpu() - before
}

/// Each upload through the service, one after the other; whether each was
/// accepted must be `accepted`.
async fn upload_each(service: &Service, people: &[Person], uploads: &[Vec<Vec<u8>>], accepted: bool) {
    for (p, u) in people.iter().zip(uploads) {
        let items = u.iter().map(|m| (None, key_package_element(m))).collect();
        let req = iq(&p.jid(), directory_jid(&p.account), IqKind::Set, publish_request(NODE, items));
        assert_eq!(service.handle_iq(&req).await.is_ok(), accepted, "upload of {}", p.account);
    }
}

/// CPU per upload of 20 packages: accepted; refused as duplicates of the
/// stored ones; refused for a full pool; and the verify-first order's cost
/// of refusing them (every package through `keypackages::verify`).
async fn bench_refusals(plan: &Plan, figures: &mut Vec<Figure>) {
    const PER_UPLOAD: usize = 20;
    let people: Vec<Person> = (0..plan.refusals).map(|i| Person::new("r", i)).collect();
    let fresh = || -> Vec<Vec<Vec<u8>>> {
        people.iter().map(|p| (0..PER_UPLOAD).map(|_| bytes(&MlsMessageOut::from(p.key_package()))).collect()).collect()
    };
    let (uploads, more) = (fresh(), fresh());
    let policy = Policy { cipher_suites: vec![1, 3], max_lifetime_secs: 90 * 24 * 3600, clock_skew_secs: 300 };
    let crypto = OpenMlsRustCrypto::default();
    let (mut accepted, mut duplicate, mut full, mut verify_first) = (vec![], vec![], vec![], vec![]);
    for _ in 0..plan.runs {
        let dir = tempfile::tempdir().unwrap();
        let (service, store) = service(dir.path(), &format!("[directory]\nmax_key_packages_per_device = {PER_UPLOAD}\n"));
        publish(&store, &people).await;
        let per_upload = |cpu: f64| cpu * 1e6 / people.len() as f64;
        accepted.push(per_upload(cpu_of(upload_each(&service, &people, &uploads, true)).await));
        duplicate.push(per_upload(cpu_of(upload_each(&service, &people, &uploads, false)).await));
        full.push(per_upload(cpu_of(upload_each(&service, &people, &more, false)).await));
        let now = xmpp_mls::protocol::now();
        let verify_all = async {
            for (p, u) in people.iter().zip(&uploads) {
                for m in u {
                    verify(crypto.crypto(), m, &p.account, &[p.device()], &policy, now).unwrap();
                }
            }
        };
        verify_first.push(per_upload(cpu_of(verify_all).await));
        store.close().await;
    }
    let accepted = median(accepted);
    figures.push(Figure::new("keypackage_upload_accepted_cpu", accepted, "us", 1.0, "accepted upload of 20"));
    let verify_first = median(verify_first);
    for (name, cpu) in [("keypackage_upload_refused_duplicate_cpu", median(duplicate)), ("keypackage_upload_refused_full_pool_cpu", median(full))] {
        figures.push(Figure::new(name, cpu, "us", cpu / accepted, "accepted upload of 20"));
        figures.push(Figure::new(format!("{name}_vs_verify_first"), cpu, "us", cpu / verify_first, "verify-first refusal"));
    }
}

/// Appends `n` application messages through the store's append path, in
/// concurrent waves as live traffic would arrive. Each is distinct, as
/// real ones are (the store answers the same octets again as a resend):
/// a template whose last 8 octets, in its AEAD tag, carry a counter.
async fn fill_archive(store: &Store, id: &[u8], sender: &str, messages: &[Vec<u8>], n: usize) {
    const WAVE: usize = 2048;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for start in (0..n).step_by(WAVE) {
        join_all((start..n.min(start + WAVE)).map(|i| {
            let mut message = messages[i % messages.len()].clone();
            let tail = message.len() - 8;
            let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            message[tail..].copy_from_slice(&unique.to_be_bytes());
            let budget = ArchiveBudget { group_bytes_per_day: u64::MAX, account_bytes_per_day: u64::MAX };
            store.append_application(id.to_vec(), sender.to_owned(), 0, 0, message, budget)
        }))
        .await
        .into_iter()
        .for_each(|r| assert!(matches!(r.unwrap(), AppendOutcome::Archived { .. })));
    }
}

/// Median time of a 50-item MAM query through the service.
async fn page_time(service: &Service, owner: &Person, id: &[u8], cursor: &Cursor, runs: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..runs {
        let req = iq(&owner.jid(), group_jid(id), IqKind::Set, query_element("q", &[], 50, cursor, false));
        let t = Instant::now();
        let response = handle(service, req).await;
        times.push(ms(t.elapsed()));
        assert_eq!(response.messages.len(), 50);
    }
    median(times)
}

/// MAM pages as one group's archive grows, and stored bytes per message.
async fn bench_archive(plan: &Plan, figures: &mut Vec<Figure>) {
    let dir = tempfile::tempdir().unwrap();
    let (service, store) = service(dir.path(), "");
    let owner = Person::new("a", 0);
    publish(&store, std::slice::from_ref(&owner)).await;
    let id: [u8; 16] = rand::random();
    let mut group = create_group(&service, std::slice::from_ref(&owner), id).await;
    let sender = owner.jid().to_string();
    let entry = FeedEntry { device_id: owner.device_id.clone(), full_jid: sender.clone(), account: owner.account.to_string() };
    joined(&store, &id, entry).await;
    let messages: Vec<Vec<u8>> = (0..64)
        .map(|i| bytes(&group.create_message(&owner.provider, &owner.signer, &[b'a' + i as u8; CHAT_LINE]).unwrap()))
        .collect();
    let ciphertext = messages.iter().map(Vec::len).sum::<usize>() as f64 / messages.len() as f64;
    let (mut archived, mut first) = (0, None::<[f64; 2]>);
    for &size in &plan.archive_sizes {
        let before = used_bytes(&store).await;
        fill_archive(&store, &id, &sender, &messages, size - archived).await;
        let per_message = (used_bytes(&store).await - before) / (size - archived) as f64;
        if archived == 0 {
            figures.push(Figure::new("stored_bytes_per_message", per_message, "bytes", per_message / ciphertext, "MLS ciphertext"));
        }
        archived = size;
        let middle = store
            .archive_page(Source::Group(id.to_vec()), Filter::default(), PageStart::After(size as u64 / 2), 1)
            .await
            .unwrap();
        let middle = Cursor::After(middle.items[0].stanza_id.clone());
        let times = [
            page_time(&service, &owner, &id, &middle, 20).await,
            page_time(&service, &owner, &id, &Cursor::Last, 20).await,
        ];
        let base = *first.get_or_insert(times);
        let small = plan.archive_sizes[0];
        for ((place, t), b) in ["middle", "end"].iter().zip(times).zip(base) {
            figures.push(Figure::new(format!("mam_page_{place}_{size}"), t, "ms", t / b, format!("mam_page_{place}_{small}")));
        }
    }
    store.close().await;
}

/// A store with `groups` groups of 10 members and `devices` devices
/// (10 per account), written through the store's own paths.
async fn fill_directory(path: &Path, groups: usize, devices: usize) {
    let text = format!("[component]\njid = \"{DOMAIN}\"\nsecret = \"bench\"\n[store]\npath = \"{}\"\n", path.display());
    let config = Config::from_toml(&text, std::iter::empty()).unwrap();
    let store = Store::open(&config.store).unwrap();
    let now = xmpp_mls::protocol::now();
    let key = |i: usize| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        k.to_vec()
    };
    let account = |i: usize| format!("u{}@example.org", i / 10);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(2048) {
        join_all(chunk.iter().map(|&i| {
            let device = Device { id: format!("d{}", i % 10), signature_key: key(i), label: None, expires: Some(i64::MAX / 2) };
            store.publish_device(account(i), device, Element::bare("event", "urn:x"), 16, now)
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    }
    let group_info = vec![0u8; 1024];
    for chunk in (0..groups).collect::<Vec<_>>().chunks(2048) {
        join_all(chunk.iter().map(|&g| {
            let members: Vec<Member> = (0..10)
                .map(|l| {
                    let i = (g * 10 + l) % devices;
                    Member { leaf: l as u32, account: account(i), signature_key: key(i) }
                })
                .collect();
            let group_info = group_info.clone();
            store.group_tx((g as u64).to_be_bytes().to_vec(), move |tx| {
                tx.create(0, &group_info, &Default::default())?;
                tx.change_members(&[], &members, 0)
            })
        }))
        .await
        .into_iter()
        .for_each(|r: Result<(), xmpp_mls::store::StoreError>| r.unwrap());
    }
    store.close().await;
}

/// The release `xmpp-mls` binary beside this example, built if needed.
fn server_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--locked", "--quiet", "--bin", "xmpp-mls"])
        .status()
        .unwrap();
    assert!(status.success(), "cannot build xmpp-mls");
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("xmpp-mls")
}

/// Peak RSS (VmHWM) in KiB of `xmpp-mls serve` on the store at `path`,
/// idle: its component port has no listener, so it keeps reconnecting.
fn idle_peak_rss(binary: &Path, dir: &Path, path: &Path) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[component]\njid = \"{DOMAIN}\"\nsecret = \"bench\"\nserver = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\n",
            path.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn bench_rss(figures: &mut Vec<Figure>) {
    let binary = server_binary();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.sqlite3");
    fill_directory(&full, 10_000, 100_000).await;
    let empty = idle_peak_rss(&binary, dir.path(), &dir.path().join("empty.sqlite3"));
    let loaded = idle_peak_rss(&binary, dir.path(), &full);
    figures.push(Figure::new("idle_peak_rss_10k_groups_100k_devices", loaded / 1024.0, "MiB", loaded / empty, "empty store"));
}

#[tokio::main]
async fn main() {
    let cli = Args::parse();
    let (args, quick) = (&cli.args, cli.quick);
    let plan = Plan::new(quick);
    let only = args.iter().position(|a| a == "--only").map(|i| args.get(i + 1).expect("--only SECTION").as_str());
    let run = |section: &str| only.is_none_or(|o| o == section);
    let mut figures = Vec::new();
    if run("commits") {
        bench_commits(&plan, &mut figures).await;
    }
    if run("concurrency") {
        bench_concurrent_commits(&plan, &mut figures).await;
    }
    if run("keypackages") {
        bench_key_packages(&plan, &mut figures).await;
    }
    if run("refusals") {
        bench_refusals(&plan, &mut figures).await;
    }
    if run("archive") {
        bench_archive(&plan, &mut figures).await;
    }
    if run("rss") {
        bench_rss(&mut figures).await;
    }
    match std::env::var("XMPP_BENCH_POSTGRES") {
        Ok(server) if run("postgres") => bench_postgres(&plan, &server, &mut figures).await,
        _ => println!("# postgres section skipped: XMPP_BENCH_POSTGRES names no PostgreSQL server"),
    }
    cli.write_json("paths", &figures);
}

