//! Configuration: the YAML model, its validation, and compilation into what the
//! pipeline runs (engine settings and an immutable classifier).
//!
//! Errors name `file:line:col` and quote the offending line. Loading never changes a
//! running configuration: a caller swaps in the result only when it is `Ok`.

mod model;
pub mod values;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use holdfast_pipeline::conntrack::TimerClass;
use holdfast_pipeline::engine::{EngineConfig, Pickup};
use holdfast_pipeline::policy::{Action, Cidr, Classifier, ProtoMatch, Rule};
use holdfast_pipeline::time::MAX_TIMEOUT;
use holdfast_pipeline::{Duration, Zone};
use serde_saphyr::{Location, Spanned};

use holdfast_dataplane::bpf::XdpMode;
use holdfast_dataplane::worker::Idle;
use holdfast_pipeline::conntrack::pressure::{Evict, Pressure};
use model::{ActionCfg, EvictCfg, File, IdleCfg, OnReloadCfg, PickupCfg, XdpModeCfg};
use values::OneOrMany;

/// Everything a run needs, compiled and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub engine: EngineConfig,
    pub classifier: Arc<Classifier>,
    /// `zones.inside.networks`.
    pub inside: Vec<Cidr>,
    pub outside_interface: Option<String>,
    pub inside_interface: Option<String>,
    pub dataplane: Dataplane,
    pub control: Control,
    pub log: Log,
    /// `policy.on_reload`: re-judge existing flows by new rules (`Recheck`) or not.
    pub on_reload: OnReload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReload {
    Keep,
    Recheck,
}

/// `control.*`: the HTTP endpoint and saturation reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// `None`: no endpoint (`listen: off`).
    pub listen: Option<std::net::SocketAddr>,
    /// `control.token_file`: a file whose contents `/flows` and `/reload` require as a
    /// bearer token (relative paths are relative to the config file).
    pub token_file: Option<std::path::PathBuf>,
    pub report_interval: std::time::Duration,
    pub saturation: Thresholds,
}

/// `control.saturation`: where a saturation event is raised (and, below 90 % of it,
/// cleared).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub table_fill: f64,
    pub embryonic_share: f64,
    pub busy: f64,
    pub rx_ring_full_per_s: f64,
    pub handoff_drops_per_s: f64,
}

/// Where denials are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyOutput {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

impl fmt::Display for DenyOutput {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DenyOutput::Off => f.write_str("off"),
            DenyOutput::Stdout => f.write_str("standard output"),
            DenyOutput::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `log.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub denials: DenyOutput,
    /// Events per second over all workers; more are counted as suppressed.
    pub rate_limit: u32,
}

/// What `holdfast run` needs beyond the pipeline's settings.
#[derive(Debug, Clone)]
pub struct Dataplane {
    pub xdp_mode: [XdpMode; 2],
    pub queues: [u32; 2],
    pub cores: Vec<usize>,
    pub burst: usize,
    pub idle: Idle,
    pub umem_frames: u32,
    pub ring_size: u32,
}

impl Config {
    /// The zone a frame entered from when only its source address is known (replay):
    /// `inside` when the source is in `zones.inside.networks`.
    pub fn zone_of(&self, src: u128, v6: bool) -> Zone {
        if self.inside.iter().any(|c| c.contains(src, v6)) { Zone::Inside } else { Zone::Outside }
    }

    /// One line describing the configuration, for `check-config`.
    /// What differs between a running configuration and `new` that only a restart can
    /// change (memory sizes, the hash, interfaces, cores, the endpoint). A reload
    /// applies everything else and reports these as not applied.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what}: {a} -> {b}"));
            }
        };
        let (e, n) = (&self.engine, &new.engine);
        cmp("conntrack.capacity", e.capacity.to_string(), n.capacity.to_string());
        cmp("conntrack.fragments", e.fragments.to_string(), n.fragments.to_string());
        cmp("conntrack.tombstones", e.tombstones.to_string(), n.tombstones.to_string());
        cmp("conntrack.pressure.evict", format!("{:?}", e.pressure.evict), format!("{:?}", n.pressure.evict));
        if (e.per_source_limit == 0) != (n.per_source_limit == 0) {
            cmp("conntrack.per_source_limit", e.per_source_limit.to_string(), n.per_source_limit.to_string());
        }
        cmp("zones.outside.interface", format!("{:?}", self.outside_interface), format!("{:?}", new.outside_interface));
        cmp("zones.inside.interface", format!("{:?}", self.inside_interface), format!("{:?}", new.inside_interface));
        let (d, m) = (&self.dataplane, &new.dataplane);
        cmp("zones.*.xdp_mode", format!("{:?}", d.xdp_mode), format!("{:?}", m.xdp_mode));
        cmp("zones.*.queues", format!("{:?}", d.queues), format!("{:?}", m.queues));
        cmp("workers.cores", format!("{:?}", d.cores), format!("{:?}", m.cores));
        cmp("workers.burst", d.burst.to_string(), m.burst.to_string());
        cmp("workers.idle", format!("{:?}", d.idle), format!("{:?}", m.idle));
        cmp("workers.umem_frames", d.umem_frames.to_string(), m.umem_frames.to_string());
        cmp("workers.ring_size", d.ring_size.to_string(), m.ring_size.to_string());
        let show = |l: Option<std::net::SocketAddr>| l.map_or("off".to_string(), |a| a.to_string());
        cmp("control.listen", show(self.control.listen), show(new.control.listen));
        out
    }

    pub fn summary(&self) -> String {
        let rules = self.classifier.rules();
        let allow = rules.iter().filter(|r| r.action == Action::Allow).count();
        format!(
            "{} rules ({} allow, {} deny, default {}), {} inside networks, capacity {} entries per worker, pickup {}, evict {}",
            rules.len(),
            allow,
            rules.len() - allow,
            if self.classifier.default_action() == Action::Allow { "allow" } else { "deny" },
            self.inside.len(),
            self.engine.capacity,
            match self.engine.pickup {
                Pickup::Strict => "strict",
                Pickup::ReverseOfAllowed => "reverse-of-allowed",
                Pickup::Loose => "loose",
            },
            match self.engine.pressure.evict {
                Evict::ByClass => "by-class",
                Evict::Lru => "lru",
                Evict::None => "none",
            }
        )
    }
}

/// Shortest token `control.token_file` may hold: 16 characters (e.g. from
/// `head -c 24 /dev/urandom | base64`).
pub const MIN_TOKEN: usize = 16;

/// Reads `control.token_file`: one line, at least [`MIN_TOKEN`] characters, of
/// printable ASCII. Says what is wrong with the file otherwise. Warns (on stderr) when
/// other users may read it.
pub fn read_token(path: &Path) -> Result<String, String> {
    let what = format!("control.token_file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{what}: cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what}: not a regular file"));
    }
    if meta.len() > 4096 {
        return Err(format!("{what}: {} bytes; a token is one line of at most 4096", meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what}: cannot read: {e}"))?;
    let t = text.trim();
    if t.lines().count() > 1 {
        return Err(format!("{what}: holds several lines; put the token alone on one line"));
    }
    if t.len() < MIN_TOKEN {
        return Err(format!("{what}: the token is {} characters; use at least {MIN_TOKEN} (e.g. head -c 24 /dev/urandom | base64)", t.len()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what}: the token must be printable ASCII without spaces (it travels in an HTTP header)"));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o004 != 0 {
        eprintln!("holdfast: WARNING: {what} is readable by every user (chmod 600 it)");
    }
    Ok(t.to_string())
}

/// A configuration error with its position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when unknown (e.g. the file could not be read).
    pub line: u64,
    pub col: u64,
    pub message: String,
    /// The text of the offending line (cut around the column when long).
    pub source_line: Option<String>,
    /// Where the caret goes in `source_line` when it was cut (else `col`).
    pub shown_col: Option<u64>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if let Some(src) = &self.source_line {
            let n = self.line.to_string();
            writeln!(f, "{n} | {src}")?;
            let col = self.shown_col.unwrap_or(self.col);
            write!(f, "{} | {}^", " ".repeat(n.len()), " ".repeat(col.saturating_sub(1) as usize))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and compiles a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let fail = |message: String| ConfigError { file: name.clone(), message, ..ConfigError::default() };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a config file".into()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!("{} bytes: a config file may have at most {MAX_CONFIG_BYTES}; put long prefix lists in src_file / dst_file", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text: byte {} is invalid", e.utf8_error().valid_up_to())))?;
    // Paths in the file (src_file, the deny log, the token) are relative to the file,
    // not to wherever the daemon was started.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut c = parse_in(&text, &name, dir)?;
    if let DenyOutput::File(p) = &c.log.denials
        && p.is_relative()
    {
        c.log.denials = DenyOutput::File(dir.join(p));
    }
    if let Some(p) = &c.control.token_file
        && p.is_relative()
    {
        c.control.token_file = Some(dir.join(p));
    }
    Ok(c)
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// Where relative paths in the file (`src_file`, …) start.
    dir: &'a Path,
}

/// Largest config file read, and the most YAML nodes it may hold: a blocklist of
/// 300,000 prefixes inline is about 600,000; longer lists belong in `src_file`.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
pub const MAX_YAML_NODES: usize = 4_000_000;
/// Largest prefix file (`src_file`, `dst_file`).
pub const MAX_PREFIX_FILE_BYTES: u64 = 256 << 20;

impl Ctx<'_> {
    /// An empty list where one is not allowed: always an error — a list that came out
    /// empty from a template would otherwise match everything (or nothing) silently.
    fn empty_list(&self, loc: Location, key: &str) -> ConfigError {
        let hint = if key.starts_with("rule ") {
            "in a rule it would match everything, as if the key were absent; remove the key if you mean any, or list at least one value"
        } else if key == "policy.rules" {
            "remove the key if you mean no rules (policy.default then decides every new flow)"
        } else {
            "remove the key if you mean none, or list at least one value"
        };
        self.at(loc, format!("{key} is an empty list, which is almost always a templating mistake: {hint}"))
    }

    /// The prefixes of a `src_file` / `dst_file`: one per line, `#` starts a comment,
    /// blank lines are skipped. Errors name the prefix file, its line and column.
    fn prefix_file(&self, key: &Spanned<String>, what: &str) -> Result<Vec<Cidr>, ConfigError> {
        let path = self.dir.join(key.value.trim());
        let shown = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| self.at(key.referenced, format!("{what} {shown}: cannot read: {e}")))?;
        if meta.len() > MAX_PREFIX_FILE_BYTES {
            return Err(self.at(key.referenced, format!("{what} {shown}: {} bytes, more than the {MAX_PREFIX_FILE_BYTES} a prefix file may have", meta.len())));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| self.at(key.referenced, format!("{what} {shown}: cannot read: {e}")))?;
        let mut out = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let col = line.find(t).unwrap_or(0) as u64 + 1;
            let c = values::parse_cidr(t).map_err(|e| {
                ConfigError {
                    file: shown.clone(),
                    line: n as u64 + 1,
                    col,
                    message: format!("{what}: {e}"),
                    source_line: Some(raw.to_string()),
                    shown_col: None,
                }
                .clipped()
            })?;
            out.push(c);
        }
        if out.is_empty() {
            return Err(self.at(
                key.referenced,
                format!("{what} {shown} holds no prefixes: an empty list is almost always a mistake (the rule would match every address); list at least one"),
            ));
        }
        Ok(out)
    }

    fn at(&self, loc: Location, message: impl Into<String>) -> ConfigError {
        let (line, col) = (loc.line(), loc.column());
        ConfigError {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
            source_line: (line > 0).then(|| self.text.lines().nth(line as usize - 1).unwrap_or("").to_string()),
            shown_col: None,
        }
        .clipped()
    }
}

impl ConfigError {
    /// Keeps the quoted source line short: at most 160 characters around the column
    /// (a 200 KB line is not echoed whole), the caret still under the spot.
    fn clipped(mut self) -> ConfigError {
        const WIDTH: usize = 160;
        let Some(src) = &self.source_line else { return self };
        let chars: Vec<char> = src.chars().collect();
        if chars.len() <= WIDTH {
            return self;
        }
        let col = (self.col.max(1) as usize - 1).min(chars.len());
        let start = col.saturating_sub(WIDTH / 2).min(chars.len().saturating_sub(WIDTH));
        let end = (start + WIDTH).min(chars.len());
        let mut shown = String::new();
        if start > 0 {
            shown.push('…');
        }
        shown.extend(&chars[start..end]);
        if end < chars.len() {
            shown.push('…');
        }
        self.source_line = Some(shown);
        self.shown_col = Some((col - start + usize::from(start > 0) + 1) as u64);
        self
    }
}

/// Parses and compiles config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    parse_in(text, file, Path::new("."))
}

/// [`parse`], with relative paths in the file taken from `dir`.
pub fn parse_in(text: &str, file: &str, dir: &Path) -> Result<Config, ConfigError> {
    let cx = Ctx { file, text, dir };
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = 4 * MAX_YAML_NODES;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES as usize;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let f: File = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let msg = e.without_snippet().to_string();
        // serde-saphyr prefixes "line L column C: "; the position is printed separately.
        let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
        let msg = match msg.split_once(": ") {
            Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest.to_string(),
            _ => msg,
        };
        let msg = msg.lines().next().unwrap_or("");
        // ... and sometimes suffixes " at line L, column C".
        let msg = match msg.rfind(" at line ") {
            Some(i) if msg[i..].contains(", column ") => &msg[..i],
            _ => msg,
        };
        cx.at(loc, operator_words(msg))
    })?;
    compile(&cx, f)
}

/// The YAML library's messages are written for programmers using it ("set
/// DuplicateKeyPolicy in Options"); these say what is wrong in the file's terms.
fn operator_words(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("duplicate key `{key}`: each key may appear once in a mapping (remove one of them)");
    }
    if msg.contains("from_str_multiple") || msg.contains("multiple documents") || msg.contains("Documents") {
        return "the file holds several YAML documents (separated by ---): a config is one document".into();
    }
    if msg.contains("budget") || msg.contains("Budget") {
        return format!(
            "the file is too large to read as a config ({}); at most {MAX_YAML_NODES} YAML nodes — put long prefix lists in src_file / dst_file",
            msg.split(": ").last().unwrap_or(msg)
        );
    }
    if msg == "invalid floating point" || msg.starts_with("invalid floating point") {
        return "not a number (write e.g. 0.8)".into();
    }
    if msg.starts_with("expected sequence start") {
        return "expected a list here, e.g. [10.0.2.0/24] or one item per line starting with -".into();
    }
    if msg.starts_with("expected mapping start") {
        return "expected a mapping here (key: value pairs, or { key: value })".into();
    }
    if msg.starts_with("non-finite float") {
        return "a number too large to read: counts are whole numbers up to 18446744073709551615".into();
    }
    if msg == "invalid u64" || msg.starts_with("invalid u64") {
        return "not a whole number (0 or more)".into();
    }
    values::shorten(msg, 300)
}

fn compile(cx: &Ctx, f: File) -> Result<Config, ConfigError> {
    let ct = &f.conntrack;
    let capacity = ct.capacity.value.0;
    if capacity == 0 || capacity > (1 << 31) {
        return Err(cx.at(ct.capacity.referenced, format!("conntrack.capacity must be between 1 and {} entries", 1u64 << 31)));
    }
    let fragments = ct.fragments.value.0;
    if fragments == 0 || fragments > (1 << 24) {
        return Err(cx.at(ct.fragments.referenced, "conntrack.fragments must be between 1 and 16777216"));
    }
    let mut engine = EngineConfig {
        capacity: capacity as usize,
        fragments: fragments as usize,
        pickup: match ct.pickup {
            PickupCfg::Strict => Pickup::Strict,
            PickupCfg::ReverseOfAllowed => Pickup::ReverseOfAllowed,
            PickupCfg::Loose => Pickup::Loose,
        },
        arp: action(f.policy.arp),
        ndp: action(f.policy.ndp),
        non_ip: action(f.policy.non_ip),
        ..EngineConfig::default()
    };
    let t = &ct.timeouts;
    let set: [(TimerClass, &Option<Spanned<values::Dur>>); 15] = [
        (TimerClass::TcpSynSent, &t.tcp_syn_sent),
        (TimerClass::TcpSynRecv, &t.tcp_syn_recv),
        (TimerClass::TcpEstablished, &t.tcp_established),
        (TimerClass::TcpFinWait, &t.tcp_fin_wait),
        (TimerClass::TcpCloseWait, &t.tcp_close_wait),
        (TimerClass::TcpLastAck, &t.tcp_last_ack),
        (TimerClass::TcpTimeWait, &t.tcp_time_wait),
        (TimerClass::TcpClose, &t.tcp_close),
        (TimerClass::TcpSynSent2, &t.tcp_syn_sent2),
        (TimerClass::TcpRetrans, &t.tcp_max_retrans),
        (TimerClass::TcpUnack, &t.tcp_unacknowledged),
        (TimerClass::UdpUnreplied, &t.udp_unreplied),
        (TimerClass::UdpReplied, &t.udp_replied),
        (TimerClass::Icmp, &t.icmp),
        (TimerClass::Generic, &t.generic),
    ];
    for (class, v) in set {
        if let Some(d) = v {
            engine.timeouts.set(class, timeout(cx, d, class.name())?);
        }
    }
    if let Some(d) = &t.fragment {
        engine.fragment_timeout = timeout(cx, d, "fragment")?;
    }
    if ct.per_source_limit.value.0 > u64::from(u32::MAX) {
        return Err(cx.at(ct.per_source_limit.referenced, "conntrack.per_source_limit must be at most 4294967295 (0 = no limit)"));
    }
    engine.per_source_limit = ct.per_source_limit.value.0 as u32;
    if ct.tombstones.value.0 > (1 << 26) {
        return Err(cx.at(ct.tombstones.referenced, "conntrack.tombstones must be at most 67108864 (0 = none)"));
    }
    engine.tombstones = ct.tombstones.value.0 as usize;
    engine.pressure = pressure(cx, &ct.pressure)?;

    let rule_list = match &f.policy.rules {
        Some(l) if l.value.is_empty() => return Err(cx.empty_list(l.referenced, "policy.rules")),
        Some(l) => l.value.as_slice(),
        None => &[],
    };
    let mut rules = Vec::with_capacity(rule_list.len());
    for (i, sr) in rule_list.iter().enumerate() {
        let r = &sr.value;
        let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
        if let Some(prev) = rules.iter().position(|x: &Rule| x.name == name) {
            return Err(cx.at(sr.referenced, format!("duplicate rule name {name:?} (also rule {})", prev + 1)));
        }
        let icmp_ok = matches!(r.proto.0, ProtoMatch::Icmp | ProtoMatch::Number(1) | ProtoMatch::Number(58));
        if let Some(it) = &r.icmp_type
            && !icmp_ok
        {
            return Err(cx.at(it.referenced, format!("rule {name:?}: icmp_type needs proto icmp, icmpv4 or icmpv6")));
        }
        let ports_ok = matches!(r.proto.0, ProtoMatch::Any | ProtoMatch::Number(6) | ProtoMatch::Number(17) | ProtoMatch::Number(132));
        for p in [&r.src_port, &r.dst_port].into_iter().flatten() {
            if !ports_ok {
                return Err(cx.at(p.referenced, format!("rule {name:?}: ports need proto tcp, udp, sctp or any")));
            }
        }
        // An empty list would match everything (as if the key were absent): refused.
        let list = |v: &Option<Spanned<OneOrMany<values::CidrVal>>>, key: &str| -> Result<Vec<Cidr>, ConfigError> {
            match v {
                None => Ok(vec![]),
                Some(l) if l.value.is_empty() => Err(cx.empty_list(l.referenced, &format!("rule {name:?}: {key}"))),
                Some(l) => Ok(l.value.to_vec().into_iter().map(|c| c.0).collect()),
            }
        };
        let mut src = list(&r.src, "src")?;
        let mut dst = list(&r.dst, "dst")?;
        if let Some(file) = &r.src_file {
            src.extend(cx.prefix_file(file, &format!("rule {name:?}: src_file"))?);
        }
        if let Some(file) = &r.dst_file {
            dst.extend(cx.prefix_file(file, &format!("rule {name:?}: dst_file"))?);
        }
        let many = |v: &Option<Spanned<OneOrMany<_>>>, key: &str| match v {
            Some(l) if l.value.is_empty() => Err(cx.empty_list(l.referenced, &format!("rule {name:?}: {key}"))),
            _ => Ok(()),
        };
        many(&r.src_port, "src_port")?;
        many(&r.dst_port, "dst_port")?;
        if let Some(l) = &r.icmp_type
            && l.value.is_empty()
        {
            return Err(cx.empty_list(l.referenced, &format!("rule {name:?}: icmp_type")));
        }
        rules.push(Rule {
            name,
            from: r.from.zone(),
            to: r.to.zone(),
            proto: r.proto.0,
            src,
            dst,
            src_ports: r.src_port.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            dst_ports: r.dst_port.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            icmp_types: r.icmp_type.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            action: action(r.action),
        });
    }
    if let (Some(o), Some(i)) = (&f.zones.outside.interface, &f.zones.inside.interface)
        && o.value == i.value
    {
        return Err(cx.at(
            i.referenced,
            format!("zones.inside.interface is {:?}, the same as zones.outside.interface: Holdfast sits between two interfaces, one per side", i.value),
        ));
    }
    for z in [&f.zones.outside.interface, &f.zones.inside.interface].into_iter().flatten() {
        let n = &z.value;
        if n.is_empty() || n.len() > 15 || n.contains('/') || n.chars().any(char::is_whitespace) {
            return Err(cx.at(z.referenced, format!("{n:?} is not an interface name (at most 15 characters, no '/' or spaces)")));
        }
    }
    let mut inside = Vec::new();
    for (zone, z) in [("outside", &f.zones.outside), ("inside", &f.zones.inside)] {
        if let Some(n) = &z.networks {
            if n.value.is_empty() {
                return Err(cx.empty_list(n.referenced, &format!("zones.{zone}.networks")));
            }
            if zone == "inside" {
                inside = n.value.iter().map(|c| c.0).collect();
            }
        }
    }
    let dataplane = dataplane(cx, &f)?;
    let control = control(cx, &f.control)?;
    let log = log(cx, &f.log)?;
    Ok(Config {
        engine,
        classifier: Arc::new(Classifier::new(rules, action(f.policy.default))),
        inside,
        outside_interface: f.zones.outside.interface.as_ref().map(|i| i.value.clone()),
        inside_interface: f.zones.inside.interface.as_ref().map(|i| i.value.clone()),
        dataplane,
        control,
        log,
        on_reload: match f.policy.on_reload {
            OnReloadCfg::Keep => OnReload::Keep,
            OnReloadCfg::Recheck => OnReload::Recheck,
        },
    })
}

fn control(cx: &Ctx, c: &model::ControlCfg) -> Result<Control, ConfigError> {
    let l = c.listen.value.trim();
    let listen = if l == "off" || l.is_empty() {
        None
    } else {
        Some(
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| cx.at(c.listen.referenced, format!("control.listen: {l:?} is not an address:port such as 127.0.0.1:9477 (or off)")))?,
        )
    };
    let report_interval = match &c.report_interval {
        None => std::time::Duration::from_secs(1),
        Some(d) => {
            let ns = d.value.0.as_nanos();
            if !(100_000_000..=3_600_000_000_000).contains(&ns) {
                return Err(cx.at(d.referenced, "control.report_interval must be between 100ms and 1h"));
            }
            std::time::Duration::from_nanos(ns)
        }
    };
    let s = &c.saturation;
    for (name, v) in [("table_fill", &s.table_fill), ("embryonic_share", &s.embryonic_share), ("busy", &s.busy)] {
        if !(v.value > 0.0 && v.value <= 1.0) {
            return Err(cx.at(v.referenced, format!("control.saturation.{name} is a fraction in (0, 1]")));
        }
    }
    for (name, v) in [("rx_ring_full_per_s", &s.rx_ring_full_per_s), ("handoff_drops_per_s", &s.handoff_drops_per_s)] {
        if !(v.value > 0.0 && v.value.is_finite()) {
            return Err(cx.at(v.referenced, format!("control.saturation.{name} is a rate above 0 (events per second)")));
        }
    }
    let token_file = match &c.token_file {
        None => None,
        Some(t) if t.value.trim().is_empty() => {
            return Err(cx.at(t.referenced, "control.token_file is empty: name a file holding the token, or remove the key"));
        }
        Some(t) => Some(std::path::PathBuf::from(t.value.trim())),
    };
    Ok(Control {
        listen,
        token_file,
        report_interval,
        saturation: Thresholds {
            table_fill: s.table_fill.value,
            embryonic_share: s.embryonic_share.value,
            busy: s.busy.value,
            rx_ring_full_per_s: s.rx_ring_full_per_s.value,
            handoff_drops_per_s: s.handoff_drops_per_s.value,
        },
    })
}

fn log(cx: &Ctx, l: &model::LogCfg) -> Result<Log, ConfigError> {
    let d = l.denials.value.trim();
    let denials = match d {
        "-" => DenyOutput::Stdout,
        "off" | "none" => DenyOutput::Off,
        "" => return Err(cx.at(l.denials.referenced, "log.denials is a path, \"-\" for standard output, or off")),
        p => DenyOutput::File(p.into()),
    };
    if l.rate_limit.value.0 > 10_000_000 {
        return Err(cx.at(l.rate_limit.referenced, "log.rate_limit must be at most 10000000 events per second (0 = log none)"));
    }
    Ok(Log { denials, rate_limit: l.rate_limit.value.0 as u32 })
}

fn dataplane(cx: &Ctx, f: &File) -> Result<Dataplane, ConfigError> {
    let w = &f.workers;
    let mode = |m: XdpModeCfg| match m {
        XdpModeCfg::Native => XdpMode::Native,
        XdpModeCfg::Generic => XdpMode::Generic,
    };
    let mut queues = [0u32; 2];
    for (k, z) in [&f.zones.outside, &f.zones.inside].into_iter().enumerate() {
        if z.queues.value.0 == 0 || z.queues.value.0 > 256 {
            return Err(cx.at(z.queues.referenced, "zones.*.queues must be between 1 and 256"));
        }
        queues[k] = z.queues.value.0 as u32;
    }
    if w.cores.value.is_empty() || w.cores.value.len() > 256 {
        return Err(cx.at(w.cores.referenced, "workers.cores lists between 1 and 256 cores"));
    }
    for z in [&f.zones.outside, &f.zones.inside] {
        if z.queues.value.0 as usize != w.cores.value.len() {
            return Err(cx.at(
                z.queues.referenced,
                format!(
                    "zones.*.queues is {} but workers.cores lists {} worker(s): worker i serves queue i of both interfaces, so they must be equal",
                    z.queues.value.0,
                    w.cores.value.len()
                ),
            ));
        }
    }
    if !(1..=1024).contains(&w.burst.value.0) {
        return Err(cx.at(w.burst.referenced, "workers.burst must be between 1 and 1024"));
    }
    if !(64..=(1 << 20)).contains(&w.umem_frames.value.0) {
        return Err(cx.at(w.umem_frames.referenced, "workers.umem_frames must be between 64 and 1048576 (4 KiB each)"));
    }
    if !w.ring_size.value.0.is_power_of_two() || !(64..=(1 << 16)).contains(&w.ring_size.value.0) {
        return Err(cx.at(w.ring_size.referenced, "workers.ring_size must be a power of two between 64 and 65536"));
    }
    Ok(Dataplane {
        xdp_mode: [mode(f.zones.outside.xdp_mode), mode(f.zones.inside.xdp_mode)],
        queues,
        cores: w.cores.value.iter().map(|c| c.0 as usize).collect(),
        burst: w.burst.value.0 as usize,
        idle: match w.idle {
            IdleCfg::Spin => Idle::Spin,
            IdleCfg::Adaptive => Idle::Adaptive,
            IdleCfg::Sleep => Idle::Sleep,
        },
        umem_frames: w.umem_frames.value.0 as u32,
        ring_size: w.ring_size.value.0 as u32,
    })
}

fn pressure(cx: &Ctx, p: &model::PressureCfg) -> Result<Pressure, ConfigError> {
    let mut out = Pressure::default();
    if let Some(e) = &p.evict {
        out.evict = match e.value {
            EvictCfg::ByClass => Evict::ByClass,
            EvictCfg::Lru => Evict::Lru,
            EvictCfg::None => Evict::None,
        };
    }
    if let Some(s) = &p.embryonic_share {
        if !(s.value > 0.0 && s.value <= 1.0) {
            return Err(cx.at(s.referenced, "conntrack.pressure.embryonic_share must be in (0, 1]"));
        }
        if out.evict != Evict::ByClass && s.value < 1.0 {
            return Err(
                cx.at(s.referenced, "embryonic_share applies to evict: by-class only; the lru and none models imitate systems without a quota (use 1.0)")
            );
        }
        out.embryonic_share = s.value;
    }
    if out.evict != Evict::ByClass {
        out.embryonic_share = 1.0;
    }
    let start = p.adaptive_start.as_ref();
    let end = p.adaptive_end.as_ref();
    if let Some(s) = start {
        out.adaptive_start = s.value;
    }
    if let Some(e) = end {
        out.adaptive_end = e.value;
    }
    if !(0.0..2.0).contains(&out.adaptive_start) || out.adaptive_end <= out.adaptive_start || out.adaptive_end > 2.0 {
        let loc = end.or(start).map(|s| s.referenced).unwrap_or(Location::UNKNOWN);
        return Err(cx.at(loc, "conntrack.pressure needs 0 <= adaptive_start < adaptive_end <= 2 (fill fractions; pf uses 0.6 and 1.2)"));
    }
    if let Some(f) = &p.timeout_floor {
        out.timeout_floor_ticks = timeout(cx, f, "pressure.timeout_floor")?.ticks();
    }
    Ok(out)
}

fn action(a: ActionCfg) -> Action {
    match a {
        ActionCfg::Allow => Action::Allow,
        ActionCfg::Deny => Action::Deny,
    }
}

fn timeout(cx: &Ctx, d: &Spanned<values::Dur>, name: &str) -> Result<Duration, ConfigError> {
    let v = d.value.0;
    if v < Duration::from_secs(1) || v > MAX_TIMEOUT {
        return Err(cx.at(d.referenced, format!("timeout {name} must be between 1s and 365d")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
