//! `xmpp-mls client …`: the client library driven from a shell.

use std::path::PathBuf;

use clap::Subcommand;
use openmls_rust_crypto::RustCrypto;
use xmpp_mls::client::{
    backed_up_devices, backup_device, describe, location, request_enrollment, restore_device, set_location, ClientError, Content,
    Device, GroupClient, GroupEvent, KdfParams, Location, Session, Unreadable, Vault, VaultError, KEEP_EPOCHS, POOL_TARGET,
};
use xmpp_mls::protocol::mam::Cursor;
use xmpp_mls::protocol::{format_time, NS, NS_SID};
use xmpp_mls::protocol::keypackages::{Claim, ClaimOutcome};
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns;

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum ClientAction {
    /// Show what an entity of the service offers: identity, features, limits.
    Info {
        /// Default: the service itself.
        jid: Option<Jid>,
    },
    /// This account's devices (the Authentication Service).
    #[command(subcommand)]
    Device(DeviceAction),
    /// This device's KeyPackages on the service.
    #[command(subcommand)]
    Keypackages(KeyPackagesAction),
    /// Groups of this device. Every group command first catches up from the
    /// inbox and the archives (progress on stderr).
    #[command(subcommand)]
    Group(GroupAction),
    /// Page through a group's archive (newest page first by default); with
    /// XMPP_MLS_PASSPHRASE set, read it decrypted with the vault's snapshots
    /// (works on a new device of the account).
    History {
        group: BareJid,
        /// Show the page before this stanza id.
        #[arg(long)]
        before: Option<String>,
        #[arg(long, default_value_t = 20)]
        max: usize,
        /// Decrypted: show each message's content as XML, not only its body.
        #[arg(long)]
        xml: bool,
    },
    /// This account's inbox: Welcomes and notices kept until acknowledged.
    Inbox,
    /// The account's vault of client-encrypted state. The passphrase comes
    /// from XMPP_MLS_PASSPHRASE.
    #[command(subcommand)]
    Vault(VaultAction),
    /// Claim one KeyPackage per device of ACCOUNT and verify each against
    /// ACCOUNT's device list.
    Claim {
        account: BareJid,
        /// Only these devices.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Only this RFC 9420 cipher suite (e.g. 1).
        #[arg(long)]
        cipher_suite: Option<u16>,
    },
}

#[derive(Subcommand)]
pub enum DeviceAction {
    /// Create this device (new Ed25519 key, kept in --state), publish it
    /// and upload its KeyPackages.
    Init {
        #[arg(long)]
        label: Option<String>,
    },
    /// List the live devices of ACCOUNT (default: this account).
    List { account: Option<BareJid> },
    /// Remove a device of this account (default: this device) and its
    /// KeyPackages from the service.
    Remove { device_id: Option<String> },
}

#[derive(Subcommand)]
pub enum GroupAction {
    /// Create a group with this device as its only member; prints its JID.
    Create,
    /// Add every device of the ACCOUNTs (KeyPackages claimed and verified).
    Add { group: BareJid, accounts: Vec<BareJid> },
    /// Remove an account (or one of its devices) from the group.
    Remove {
        group: BareJid,
        account: BareJid,
        #[arg(long)]
        device: Option<String>,
    },
    /// Update this device's keys: by commit, or by proposal with --proposal.
    Update {
        group: BareJid,
        #[arg(long)]
        proposal: bool,
    },
    /// Leave the group (a self-remove proposal another member commits; the
    /// service stops delivering it to the whole account at once).
    Leave { group: BareJid },
    /// List the members as account/device.
    Members { group: BareJid },
    /// What members compare out of band (safety numbers): the epoch and its
    /// epoch check, then each leaf's account/device, key fingerprint and
    /// whether the key is in the account's device list.
    Verify { group: BareJid },
    /// Send TEXT and wait for the service's echo (its place in the order).
    Send { group: BareJid, text: String },
    /// Join every group's feed and print what happens, for SECONDS (or until Ctrl-C).
    Listen {
        #[arg(long)]
        seconds: Option<u64>,
        /// Show each message's content as XML (the children of its envelope's <content/>), not only its body.
        #[arg(long)]
        xml: bool,
    },
    /// List the groups this device is in.
    List,
}

#[derive(Subcommand)]
pub enum VaultAction {
    /// Set the vault up: a data key wrapped under the passphrase (Argon2id),
    /// where the account's location record says (this service if none), or
    /// --at "pep" (the account's own server), "service" or another MLS
    /// service's JID, which then becomes the account's location record.
    Init {
        #[arg(long)]
        at: Option<String>,
    },
    /// Where the vault is, and its blobs with their versions and sizes.
    Status,
    /// Move the vault --to "pep", "service" or another MLS service's JID:
    /// copy, check the copy's digest, point the location record at it, and
    /// only then erase the old place.
    Move {
        #[arg(long)]
        to: String,
    },
    /// Back this device's state up (sealed, compressed, in chunks).
    Backup,
    /// Restore a device's backup into --state (which must not exist), then
    /// catch up with any group command.
    Restore {
        #[arg(long)]
        device: Option<String>,
    },
    /// Lock the data keys under the passphrase in XMPP_MLS_NEW_PASSPHRASE.
    Passwd,
    /// Replace the data key and re-seal every blob.
    Rotate,
    /// On a new device: ask to be enrolled, so that it opens the vault with
    /// a key of its own instead of the passphrase; prints the code to give
    /// to `vault enroll` on a device already in the vault.
    EnrollRequest,
    /// Enroll the new device whose request has CODE.
    Enroll { code: String },
    /// Remove DEVICE's key, then replace the data key (its copies open
    /// nothing from then on); needs the passphrase if the vault has one.
    RemoveKey { device: String },
}

#[derive(Subcommand)]
pub enum KeyPackagesAction {
    /// How many KeyPackages each device of this account has left.
    Status,
    /// Top this device's pool up and renew its last-resort package if needed.
    Refill {
        #[arg(long, default_value_t = POOL_TARGET)]
        target: usize,
    },
}

/// What every client command needs.
pub struct Context {
    pub session: Session,
    pub service: Jid,
    pub state: PathBuf,
}

impl Context {
    fn account(&self) -> BareJid {
        self.session.jid().to_bare()
    }

    fn device(&self) -> Result<Device, Box<dyn std::error::Error>> {
        Ok(Device::open(&self.state, &self.account())?)
    }
}

pub async fn run(ctx: Context, action: ClientAction) -> CliResult {
    if !matches!(action, ClientAction::Group(_) | ClientAction::History { .. } | ClientAction::Inbox) {
        let result = run_directory(&ctx, action).await;
        ctx.session.close().await;
        return result;
    }
    let device = ctx.device()?;
    // With a passphrase or an enrolled key, a set-up vault keeps snapshots
    // and reads history.
    let pass = std::env::var("XMPP_MLS_PASSPHRASE").ok();
    let vault = match (pass, device.enrolled_key()?) {
        (Some(pass), _) => Some(Vault::open(&ctx.session, &ctx.service, &pass).await),
        (None, Some(key)) => Some(Vault::open_with_key(&ctx.session, &ctx.service, &key).await),
        (None, None) => None,
    };
    let vault = match vault {
        Some(Ok(v)) => {
            v.check_high_water(&device)?;
            Some(v)
        }
        Some(Err(VaultError::NotInitialised | VaultError::NotEnrolled)) | None => None,
        Some(Err(e)) => return Err(e.into()),
    };
    let mut client = GroupClient::start(ctx.session, device, ctx.service).await?;
    if let (Some(vault), ClientAction::History { group, .. }) = (&vault, &action) {
        let xml = matches!(action, ClientAction::History { xml: true, .. });
        let result = decrypted_history(&mut client, group, vault, xml).await;
        client.session.close().await;
        return result;
    }
    if let Some(vault) = vault {
        client.attach_vault(vault, KEEP_EPOCHS);
    }
    let result = match action {
        ClientAction::Group(group) => run_group(&mut client, group).await,
        ClientAction::History { group, before, max, .. } => history(&mut client, &group, before, max).await,
        ClientAction::Inbox => inbox(&mut client).await,
        _ => unreachable!("directory actions are handled above"),
    };
    client.session.close().await;
    result
}

/// Catches up, showing progress on long catch-ups.
async fn catch_up(client: &mut GroupClient) -> CliResult {
    let mut shown = false;
    client
        .catch_up_all(&mut |what, done, total| {
            if total > 100 || shown {
                eprint!("\rcatching up {what}: {done}/{total}   ");
                shown = true;
            }
        })
        .await?;
    if shown {
        eprintln!();
    }
    Ok(())
}

/// Epochs of group snapshots a CLI device keeps in the vault.

async fn decrypted_history(client: &mut GroupClient, group: &BareJid, vault: &Vault, xml: bool) -> CliResult {
    let history = client.read_history(group, vault).await?;
    for e in &history.entries {
        println!("[epoch {}] {}: {}", e.epoch, e.account, shown(&e.content, xml));
    }
    for (stanza_id, epoch, why) in &history.unreadable {
        if let Unreadable::Refused(reason) = why {
            eprintln!("[epoch {epoch}] message {stanza_id} refused: {reason}");
        }
    }
    let missing = history.unreadable.iter().filter(|(_, _, why)| !matches!(why, Unreadable::Refused(_))).count();
    if missing > 0 {
        println!("({missing} messages unreadable here: no snapshot of their epoch in the vault)");
    }
    Ok(())
}

async fn history(client: &mut GroupClient, group: &BareJid, before: Option<String>, max: usize) -> CliResult {
    let cursor = before.map(Cursor::Before).unwrap_or(Cursor::Last);
    let page = client.archive_page(&group.clone().into(), &[], max, &cursor, false).await?;
    for m in &page.stanzas {
        let id = m.get_child("stanza-id", NS_SID).and_then(|s| s.attr("id")).unwrap_or("?");
        let device = m.attr("from").and_then(|f| f.split_once('/')).map(|(_, d)| d).unwrap_or("?");
        let mls = m.get_child("mls", NS);
        let kind = mls.and_then(|x| x.attr("kind")).unwrap_or("?");
        let epoch = mls.and_then(|x| x.attr("epoch")).unwrap_or("?");
        println!("{id}  {device:<14} {kind:<12} epoch {epoch}");
    }
    println!("({} of {} items{})", page.stanzas.len(), page.count, if page.complete { ", oldest reached" } else { "" });
    Ok(())
}

async fn inbox(client: &mut GroupClient) -> CliResult {
    let inbox = xmpp_mls::client::directory_jid(client.device().account(), client.service());
    let page = client.archive_page(&inbox, &[], 100, &Cursor::First, false).await?;
    for m in &page.stanzas {
        let id = m.get_child("stanza-id", NS_SID).and_then(|s| s.attr("id")).unwrap_or("?");
        let what = m
            .children()
            .find(|c| c.name() != "stanza-id")
            .map(|c| match (c.name(), c.attr("group"), c.attr("device")) {
                ("welcome", Some(g), _) => format!("Welcome to {g}"),
                (name, _, Some(d)) => format!("{name} (device {d})"),
                (name, _, _) => name.to_owned(),
            })
            .unwrap_or_default();
        println!("{id}  {what}");
    }
    println!("({} entries kept until every device of the account acknowledged them)", page.count);
    Ok(())
}

async fn run_directory(ctx: &Context, action: ClientAction) -> CliResult {
    match action {
        ClientAction::Info { jid } => info(ctx, jid.as_ref().unwrap_or(&ctx.service)).await,
        ClientAction::Device(DeviceAction::Init { label }) => device_init(ctx, label).await,
        ClientAction::Device(DeviceAction::List { account }) => device_list(ctx, account).await,
        ClientAction::Device(DeviceAction::Remove { device_id }) => device_remove(ctx, device_id).await,
        ClientAction::Keypackages(KeyPackagesAction::Status) => keypackages_status(ctx).await,
        ClientAction::Keypackages(KeyPackagesAction::Refill { target }) => {
            let report = ctx.device()?.refill(&ctx.session, &ctx.service, target, false).await?;
            println!(
                "uploaded {} KeyPackages; pool {}; last-resort package {}",
                report.uploaded,
                report.pool,
                if report.last_resort_replaced { "renewed" } else { "kept" }
            );
            Ok(())
        }
        ClientAction::Claim { account, devices, cipher_suite } => {
            claim(ctx, &account, Claim { cipher_suite, devices }).await
        }
        ClientAction::Vault(action) => vault(ctx, action).await,
        ClientAction::Group(_) | ClientAction::History { .. } | ClientAction::Inbox => {
            unreachable!("handled by run")
        }
    }
}

async fn run_group(client: &mut GroupClient, action: GroupAction) -> CliResult {
    if !matches!(action, GroupAction::Create) {
        catch_up(client).await?;
    }
    match action {
        GroupAction::Create => println!("{}", client.create().await?),
        GroupAction::List => {
            for g in client.groups()? {
                println!("{g}");
            }
        }
        GroupAction::Add { group, accounts } => {
            client.join_feed(&group).await?;
            let a = client.add(&group, &accounts).await?;
            println!("added; epoch {} (commit {})", a.epoch, a.stanza_id);
        }
        GroupAction::Remove { group, account, device } => {
            client.join_feed(&group).await?;
            let a = match device {
                Some(d) => client.remove_device(&group, &account, &d).await?,
                None => client.remove_account(&group, &account).await?,
            };
            println!("removed; epoch {}", a.epoch);
        }
        GroupAction::Update { group, proposal } => {
            client.join_feed(&group).await?;
            let a = if proposal { client.propose_update(&group).await? } else { client.update(&group).await? };
            println!("{}; epoch {}", if proposal { "proposed" } else { "updated" }, a.epoch);
        }
        GroupAction::Leave { group } => {
            client.join_feed(&group).await?;
            client.leave(&group).await?;
            println!("left: nothing more is delivered to this account; a member's next commit removes this device");
        }
        GroupAction::Members { group } => {
            for (account, device) in client.members(&group).await? {
                println!("{account}/{device}");
            }
        }
        GroupAction::Verify { group } => {
            println!("epoch {} check {}", client.epoch(&group)?, client.epoch_check(&group)?);
            for leaf in client.leaf_keys(&group).await? {
                let listed = if leaf.listed { "listed" } else { "NOT IN THE DEVICE LIST" };
                println!("{}/{} {} {listed}", leaf.account, leaf.device, leaf.fingerprint);
            }
        }
        GroupAction::Send { group, text } => {
            client.join_feed(&group).await?;
            let id = client.send_body(&group, &text).await?;
            loop {
                match client.next_event(std::time::Duration::from_secs(10)).await? {
                    Some(GroupEvent::Delivered { id: got, stanza_id, .. }) if got == id => {
                        println!("delivered as {stanza_id}");
                        break;
                    }
                    Some(GroupEvent::Refused { id: got, error, .. }) if got == id => {
                        return Err(format!("not delivered: {error}").into())
                    }
                    Some(_) => continue,
                    None => return Err("no echo from the service within 10 s".into()),
                }
            }
        }
        GroupAction::Listen { seconds, xml } => listen(client, seconds, xml).await?,
    }
    Ok(())
}

/// A message's content for the terminal: its body, or with `xml` every
/// element of its `<content/>`.
fn shown(content: &Content, xml: bool) -> String {
    match content.body() {
        Some(body) if !xml => body,
        _ => content.0.iter().map(String::from).collect(),
    }
}

async fn listen(client: &mut GroupClient, seconds: Option<u64>, xml: bool) -> CliResult {
    client.join_all().await?;
    let deadline = seconds.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(());
        }
        let wait = left.unwrap_or(std::time::Duration::from_secs(3600));
        let event = tokio::select! {
            e = client.next_event(wait) => e?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event {
            Some(GroupEvent::Message { group, account, device, content, .. }) => {
                println!("[{}] {account}/{device}: {}", group.node().map(|n| n.as_str()).unwrap_or(""), shown(&content, xml))
            }
            Some(GroupEvent::Discarded { group, account, device, stanza_id, reason }) => {
                eprintln!("{group}: message {stanza_id} from {account}/{device} refused: {reason}")
            }
            Some(GroupEvent::Joined { group }) => println!("joined {group}"),
            Some(GroupEvent::Epoch { group, epoch, members }) => {
                let list: Vec<String> = members.iter().map(|(a, d)| format!("{a}/{d}")).collect();
                println!("{group}: epoch {epoch}, members {}", list.join(", "))
            }
            Some(GroupEvent::Proposed { group, account }) => println!("{group}: {account} proposed a change"),
            Some(GroupEvent::RemovalProposed { group, account, device }) => {
                println!("{group}: the service proposed to remove {account}/{device} (no longer in its device list)")
            }
            Some(GroupEvent::UnlistedLeaf { group, account, fingerprint }) => {
                eprintln!("{group}: a leaf of {account} with key {fingerprint} is not in its device list: removing it")
            }
            Some(GroupEvent::Removed { group }) => println!("removed from {group}"),
            Some(GroupEvent::HistoryPruned { group }) => {
                println!("history of {group} pruned past this device: rejoined, the messages in between are lost")
            }
            Some(GroupEvent::Fork { group, epoch }) => {
                eprintln!("FORK DETECTED in {group} at epoch {epoch}: not sending into it")
            }
            Some(GroupEvent::Refused { group, id, error }) => eprintln!("{group}: message {id} not delivered: {error}"),
            Some(GroupEvent::Refilled(r)) => println!("KeyPackages ran low: uploaded {}, {} on the service", r.uploaded, r.pool),
            Some(GroupEvent::Delivered { .. }) | None => {}
        }
    }
}

async fn info(ctx: &Context, jid: &Jid) -> CliResult {
    let query = minidom::Element::builder("query", ns::DISCO_INFO).build();
    let reply = ctx.session.iq(jid, "get", query).await?.ok_or("empty disco#info result")?;
    let info = DiscoInfoResult::try_from(reply)?;
    println!("{jid}");
    for id in &info.identities {
        println!("  identity: {}/{} {}", id.category, id.type_, id.name.as_deref().unwrap_or(""));
    }
    for feature in &info.features {
        println!("  feature:  {feature}");
    }
    for form in &info.extensions {
        for field in form.fields.iter().filter(|f| f.var.as_deref() != Some("FORM_TYPE")) {
            println!("  limit:    {} = {}", field.var.as_deref().unwrap_or(""), field.values.join(", "));
        }
    }
    Ok(())
}

async fn device_init(ctx: &Context, label: Option<String>) -> CliResult {
    if ctx.state.exists() {
        return Err(format!("{} already holds a device", ctx.state.display()).into());
    }
    let device = Device::create(&ctx.state, ctx.account(), label)?;
    ctx.session.publish_device(&ctx.service, &device.item(None)).await?;
    let report = device.refill(&ctx.session, &ctx.service, POOL_TARGET, true).await?;
    println!("device {} of {} published (state: {})", device.id(), ctx.account(), ctx.state.display());
    println!("  signature key: {}", short_hex(device.signature_key()));
    println!("  uploaded {} KeyPackages and a last-resort one", report.uploaded);
    Ok(())
}

async fn device_list(ctx: &Context, account: Option<BareJid>) -> CliResult {
    let account = account.unwrap_or_else(|| ctx.account());
    let own = Device::open(&ctx.state, &ctx.account()).ok().map(|d| d.id().to_owned());
    let devices = ctx.session.devices(&ctx.service, &account).await?;
    println!("{account}: {} device(s)", devices.len());
    for d in devices {
        let this = if own.as_deref() == Some(d.id.as_str()) && account == ctx.account() { " (this device)" } else { "" };
        println!(
            "  {}{this}  key {}  expires {}  {}",
            d.id,
            short_hex(&d.signature_key),
            d.expires.map(format_time).unwrap_or_default(),
            d.label.unwrap_or_default()
        );
    }
    Ok(())
}

async fn device_remove(ctx: &Context, device_id: Option<String>) -> CliResult {
    let id = match device_id {
        Some(id) => id,
        None => ctx.device()?.id().to_owned(),
    };
    ctx.session.retract_device(&ctx.service, &id).await?;
    println!("device {id} removed, with its KeyPackages");
    Ok(())
}

async fn keypackages_status(ctx: &Context) -> CliResult {
    let infos = ctx.session.key_package_infos(&ctx.service).await?;
    let devices = ctx.session.devices(&ctx.service, &ctx.account()).await?;
    for d in devices {
        let mine: Vec<_> = infos.iter().filter(|i| i.device_id == d.id).collect();
        let ordinary = mine.iter().filter(|i| !i.last_resort).count();
        let last_resort = mine.iter().any(|i| i.last_resort);
        let soonest = mine.iter().map(|i| i.not_after).min().map(format_time).unwrap_or_else(|| "-".into());
        println!(
            "{}: {ordinary} KeyPackages, last-resort {}, first expiry {soonest}",
            d.id,
            if last_resort { "present" } else { "MISSING" }
        );
    }
    Ok(())
}

async fn claim(ctx: &Context, account: &BareJid, claim: Claim) -> CliResult {
    let policy = ctx.session.key_package_policy(&ctx.service).await?;
    let outcomes = ctx.session.claim(&ctx.service, account, &claim).await?;
    let mut checks =
        ctx.session.check_claimed(&ctx.service, account, &outcomes, &policy, &RustCrypto::default()).await?.into_iter();
    println!("{account}:");
    for outcome in outcomes {
        match outcome {
            ClaimOutcome::Claimed { device, kp_ref, last_resort, .. } => println!(
                "  {device}: KeyPackage {}{}  {}",
                &kp_ref[..16.min(kp_ref.len())],
                if last_resort { " (last resort)" } else { "" },
                match checks.next() {
                    Some(Ok(_)) => "verified against the device list".to_owned(),
                    Some(Err(reason)) => format!("FAILS THE CHECK: {}", reason.reason()),
                    None => "unchecked".to_owned(),
                }
            ),
            ClaimOutcome::Exhausted { device } => println!("  {device}: no KeyPackage left"),
            ClaimOutcome::NothingCompatible { device } => println!("  {device}: no KeyPackage of that cipher suite"),
            ClaimOutcome::UnknownDevice { device } => println!("  {device}: no such device"),
        }
    }
    Ok(())
}

fn short_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&bytes[..8.min(bytes.len())])
}

/// A client error for people: stanza errors with their conditions.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Stanza(s)) => format!("refused: {}", describe(s)),
        _ => e.to_string(),
    }
}

/// "pep", "service" (this device's service) or an MLS service's JID.
fn parse_location(at: &str, service: &Jid) -> Result<Location, Box<dyn std::error::Error>> {
    Ok(match at {
        "pep" => Location::Pep,
        "service" => Location::Service(service.clone()),
        jid => Location::Service(Jid::new(jid).map_err(|e| format!("{jid}: not a JID ({e})"))?),
    })
}

fn passphrase(var: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(var).map_err(|_| format!("set {var} to the vault passphrase").into())
}

async fn vault(ctx: &Context, action: VaultAction) -> CliResult {
    let (session, service) = (&ctx.session, &ctx.service);
    if let VaultAction::Init { at } = &action {
        let pass = passphrase("XMPP_MLS_PASSPHRASE")?;
        let location = match at {
            Some(at) => parse_location(at, service)?,
            None => location(session, service).await?,
        };
        let vault = Vault::create(session, location.clone(), &pass, KdfParams::default()).await?;
        if at.is_some() {
            set_location(session, &location).await?;
        }
        println!("vault ready at {}: a random data key, wrapped under your passphrase (Argon2id, 64 MiB, t=3)", vault.location().describe());
        return Ok(());
    }
    if let VaultAction::EnrollRequest = action {
        let device = ctx.device()?;
        let code = request_enrollment(session, service, device.id(), &device.vault_key()?).await?;
        println!("enrollment requested: on a device already in the vault, run `vault enroll {code}`");
        return Ok(());
    }
    let pass = std::env::var("XMPP_MLS_PASSPHRASE").ok();
    let mut vault = match (&pass, ctx.state.exists()) {
        (Some(pass), _) => Vault::open(session, service, pass).await?,
        (None, true) => {
            let key = ctx.device()?.enrolled_key()?.ok_or(VaultError::NotEnrolled)?;
            Vault::open_with_key(session, service, &key).await?
        }
        (None, false) => return Err("set XMPP_MLS_PASSPHRASE to the vault passphrase".into()),
    };
    // A device that exists remembers the newest keys record it opened
    // (opening creates none: a restore writes the state file).
    if ctx.state.exists() {
        vault.check_high_water(&ctx.device()?)?;
    }
    match action {
        VaultAction::Init { .. } | VaultAction::EnrollRequest => unreachable!("handled above"),
        VaultAction::Status => {
            println!("location: {}", vault.location().describe());
            let mut locks: Vec<String> = vault.has_passphrase().then(|| "passphrase".to_owned()).into_iter().collect();
            locks.extend(vault.enrolled().into_iter().map(|d| format!("device {d}")));
            println!("opens with: {}", locks.join(", "));
            print_usage(&vault.usage(session).await?, service);
        }
        VaultAction::Move { to } => {
            let to = parse_location(&to, service)?;
            let digest = vault.move_to(session, to).await?;
            let digest = data_encoding::HEXLOWER.encode(&digest);
            println!("vault moved to {}; its contents read back the same (SHA-256 {digest})", vault.location().describe());
        }
        VaultAction::Backup => {
            let b = backup_device(&vault, session, &ctx.device()?).await?;
            println!(
                "device state backed up: {} octets in {} pieces; {} new, {} octets written",
                b.size, b.pieces, b.new_pieces, b.written
            );
        }
        VaultAction::Restore { device } => {
            if ctx.state.exists() {
                return Err(format!("{} exists: restore into a new --state file", ctx.state.display()).into());
            }
            let devices = backed_up_devices(&vault, session).await?;
            let id = match (device, devices.as_slice()) {
                (Some(d), _) => d,
                (None, [only]) => only.clone(),
                (None, many) => return Err(format!("choose one with --device: {}", many.join(", ")).into()),
            };
            restore_device(&vault, session, &id, &ctx.state).await?;
            println!("device {id} restored into {}; any group command now catches up", ctx.state.display());
        }
        VaultAction::Passwd => {
            vault.change_passphrase(session, &passphrase("XMPP_MLS_NEW_PASSPHRASE")?, KdfParams::default()).await?;
            println!("passphrase changed (the data keys were rewrapped; no blob was rewritten)");
        }
        VaultAction::Rotate => {
            vault.rotate(session, pass.as_deref()).await?;
            println!("data key replaced; every blob re-sealed");
        }
        VaultAction::Enroll { code } => {
            let device = vault.enroll(session, &code).await?;
            println!("device {device} enrolled: it opens the vault with its own key");
        }
        VaultAction::RemoveKey { device } => {
            vault.remove_device(session, &device, pass.as_deref()).await?;
            println!("device {device} removed; data key replaced, every blob re-sealed");
        }
    }
    Ok(())
}

/// `vault status`: octets (sealed) and blobs per group and epoch, per device backup.
fn print_usage(usage: &xmpp_mls::client::Usage, service: &Jid) {
    let blobs = |n: usize| format!("{n} blob{}", if n == 1 { "" } else { "s" });
    let room = |r: &xmpp_mls::client::Room| format!("{} octets in {}", r.octets, blobs(r.blobs));
    for (group, epochs) in &usage.groups {
        let (octets, count) = epochs.values().fold((0, 0), |(o, b), (s, c)| (o + s.octets + c.octets, b + s.blobs + c.blobs));
        println!("group {group}@{}: {octets} octets in {}", service.domain(), blobs(count));
        for (epoch, (snapshot, sent)) in epochs {
            println!("  epoch {epoch}: snapshot {}; sent copies {}", room(snapshot), room(sent));
        }
    }
    for (device, backup) in &usage.backups {
        println!("backup of device {device}: {}", room(backup));
    }
    if usage.other.blobs > 0 {
        println!("other: {}", room(&usage.other));
    }
}
