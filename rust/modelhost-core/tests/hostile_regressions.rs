//! Regression tests for the hostile-file parsers: the seed corpora and every input cargo-fuzz ever
//! flagged (replayed through the same checks as the fuzz targets in `fuzz/`), the published GGUF
//! loader CVE classes at the parser level, and a proptest short mode of the fuzz targets so that
//! `cargo test` exercises them without cargo-fuzz.

use std::path::{Path, PathBuf};

use modelhost_core::formats::gguf::{self, Value};
use modelhost_core::formats::gguf_writer as writer;
use modelhost_core::formats::safetensors;
use modelhost_core::text::template::{ChatMessage, ChatTemplate, MAX_OUTPUT_BYTES};
use modelhost_core::text::GgufTokenizer;
use modelhost_core::Error;
use proptest::prelude::*;

const TEXT: &str = "Hello, world! <|im_start|>user\n  Ünïcødé 🦀 1234 \t\n<0x41> ▁x</s>";

// --- the fuzz targets' checks, as functions ---------------------------------------------------------

fn check_gguf(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let full = gguf::parse(data, path);
    let summary = gguf::parse_summary(data, path);
    // The summary checks everything but the UTF-8 of array strings, which only the full parse reads.
    match (&full, &summary) {
        (Ok(_), Err(e)) => panic!("parse_summary refused what parse accepted: {e}"),
        (Err(e), Ok(_)) => assert!(e.to_string().contains("UTF-8"), "parse_summary accepted: {e}"),
        _ => {}
    }
    match full {
        Ok(header) => {
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            for t in &header.tensors {
                let end = t.offset.checked_add(t.size).expect("tensor end overflows");
                assert!(t.offset >= header.data_offset);
                assert!(end <= data.len(), "tensor {:?} runs past the input", t.name);
                ranges.push((t.offset, end));
            }
            ranges.sort_unstable();
            assert!(ranges.windows(2).all(|p| p[0].1 <= p[1].0), "accepted overlapping tensors");
        }
        Err(e) => assert_load_error(&e, "fuzz.gguf"),
    }
}

fn check_safetensors(data: &[u8]) {
    match safetensors::parse(data, Path::new("fuzz.safetensors")) {
        Ok(header) => assert!(header.tensor_bytes() <= data.len() as u64),
        Err(e) => assert_load_error(&e, "fuzz.safetensors"),
    }
}

fn check_tokenizer(data: &[u8]) -> bool {
    let path = Path::new("fuzz.gguf");
    let Ok(header) = gguf::parse(data, path) else { return false };
    let Ok(tok) = GgufTokenizer::from_gguf(&header, path) else { return false };
    for parse_special in [false, true] {
        if let Ok(ids) = tok.encode(TEXT, parse_special) {
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids);
        }
    }
    true
}

fn check_template(data: &[u8]) -> bool {
    let Ok(source) = std::str::from_utf8(data) else { return false };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else { return false };
    let chat = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi {{ there }} <|im_start|>"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    let mut rendered = false;
    for add_generation_prompt in [true, false] {
        if let Ok(out) = template.render(&chat, add_generation_prompt) {
            assert!(out.len() <= MAX_OUTPUT_BYTES);
            rendered = true;
        }
    }
    rendered
}

fn assert_load_error(e: &Error, file: &str) {
    match e {
        Error::ModelLoad { path, reason } => {
            assert!(path.to_string_lossy().contains(file), "error names {path:?}, not {file}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a ModelLoad error, got {other:?}"),
    }
}

// --- the corpora -----------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file directly in `dir` (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The committed seeds and the crash regressions of one fuzz target.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = repo_root();
    let mut out = Vec::new();
    for dir in [root.join("fuzz/corpus").join(target), root.join("tests/data/fuzz-regressions").join(target)] {
        for path in files(&dir) {
            let bytes = std::fs::read(&path).expect("read corpus file");
            out.push((path, bytes));
        }
    }
    out
}

#[test]
fn gguf_corpus_replays() {
    let inputs = corpus("gguf_parse");
    assert!(inputs.len() >= 3, "the gguf_parse seeds are missing");
    let mut parsed = 0;
    for (path, bytes) in &inputs {
        check_gguf(bytes);
        // Every truncation of a seed must be refused or parsed, never panic.
        for cut in (0..bytes.len()).step_by((bytes.len() / 97).max(1)) {
            check_gguf(&bytes[..cut]);
        }
        parsed += usize::from(gguf::parse(bytes, path).is_ok());
    }
    assert!(parsed >= 2, "at least the tiny seeds must parse");
}

#[test]
fn safetensors_corpus_replays() {
    let inputs = corpus("safetensors_parse");
    assert!(inputs.len() >= 2, "the safetensors_parse seeds are missing");
    for (_, bytes) in &inputs {
        check_safetensors(bytes);
        for cut in 0..bytes.len().min(4096) {
            check_safetensors(&bytes[..cut]);
        }
    }
}

#[test]
fn tokenizer_corpus_replays_and_the_seeds_build() {
    let inputs = corpus("gguf_tokenizer");
    let built = inputs.iter().filter(|(_, bytes)| check_tokenizer(bytes)).count();
    // The seeds are only useful if they reach the tokenizer: each must build.
    let seeds = inputs.iter().filter(|(p, _)| p.to_string_lossy().contains("fuzz/corpus")).count();
    assert!(seeds >= 3 && built >= seeds, "{built} of {seeds} tokenizer seeds build");
}

#[test]
fn template_corpus_replays_and_the_seeds_render() {
    let inputs = corpus("chat_template");
    let rendered = inputs.iter().filter(|(_, bytes)| check_template(bytes)).count();
    let seeds = inputs.iter().filter(|(p, _)| p.to_string_lossy().contains("fuzz/corpus")).count();
    assert!(seeds >= 4 && rendered >= seeds - 1, "{rendered} of {seeds} template seeds render");
}

/// Run `f` on a thread and wait for it, failing only if it has not finished after `WATCHDOG`: a hang must fail
/// the test rather than stall `cargo test`, and no bound this generous can fail on a slow or busy machine (tests
/// never assert a time; the fuel, not the clock, is what stops a hostile template).
fn under_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(600);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(WATCHDOG).unwrap_or_else(|e| panic!("{what}: no result after {WATCHDOG:?} ({e})"))
}

/// Render `source` to the end, or to its refusal.
fn render(source: &str) -> Result<String, Error> {
    let source = source.to_string();
    under_watchdog(&source.clone(), move || {
        let chat = [ChatMessage::new("user", "hi")];
        ChatTemplate::new(&source, "<s>", "</s>").and_then(|t| t.render(&chat, true))
    })
}

/// Inputs the fuzzer flagged as slow (timeouts under AddressSanitizer on a starved core: exponential macro
/// recursion): the fuel refuses them.
#[test]
fn fuzz_flagged_slow_templates_run_out_of_fuel() {
    let slow: Vec<_> = corpus("chat_template")
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("fuzz-regressions") && p.to_string_lossy().contains("slow"))
        .collect();
    assert!(!slow.is_empty(), "the slow-template regressions are missing");
    for (path, bytes) in slow {
        let result = render(std::str::from_utf8(&bytes).unwrap());
        assert!(
            matches!(&result, Err(Error::InvalidConfig(m)) if m.contains("ran out of fuel")),
            "{}: {result:?}",
            path.display()
        );
    }
}

// --- hostile templates: bounded -------------------------------------------------------------------

/// Renders within the output cap, or is refused.
fn assert_bounded(src: &str) {
    let result = render(src);
    assert!(result.as_ref().map_or(true, |s| s.len() <= MAX_OUTPUT_BYTES), "{src}");
}

/// Refused at compile time or at render, with our error.
fn assert_refused(src: &str) {
    let result = render(src);
    assert!(matches!(result, Err(Error::InvalidConfig(_))), "{src}: {result:?}");
}

/// Refused because it would spend more than the fuel (instructions, memory, or formatting) pays for.
fn assert_out_of_fuel(src: &str) {
    let result = render(src);
    assert!(matches!(&result, Err(Error::InvalidConfig(m)) if m.contains("ran out of fuel")), "{src}: {result:?}");
}

#[test]
fn hostile_template_nested_loops_run_out_of_fuel() {
    assert_bounded("{% for i in range(1000000000) %}{% for j in range(1000000000) %}x{% endfor %}{% endfor %}");
    assert_bounded("{% set xs = range(100000)|list %}{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}");
}

#[test]
fn hostile_template_output_is_capped() {
    assert_bounded(
        "{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}",
    );
}

/// Values built in variables and never written out: bounded because minijinja charges fuel for the memory a
/// render allocates. Unbounded, these allocate 2^40 bytes and abort the process.
#[test]
fn hostile_template_string_doubling() {
    // A plain `set` inside a loop is scoped to the iteration (as in jinja2): this one never grows.
    assert_bounded("{% set s = 'x' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}");
    assert_refused(
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    );
    assert_refused("{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f('x', 40) }}");
}

/// A list holding one long string many times costs almost no fuel (`[a] * n` is lazy) but prints as
/// gigabytes: `join` and `sum` pay for the printed size first; `string` and `pprint` format it, which the
/// display budget bounds.
#[test]
fn hostile_template_printing_a_repeated_list() {
    for filter in ["join", "string", "pprint", "sum(start='')", "join(attribute='x')"] {
        assert_refused(&format!("{{% set a = 'x' * 1000000 %}}{{{{ ([a] * 100000)|{filter}|length }}}}"));
    }
}

/// Formatting a container inside minijinja (`~`, `format`, a list built up eagerly): bounded by the display
/// budget of our patched minijinja (vendor/README.md). Unbounded, each allocates ~100 GB and aborts.
#[test]
fn hostile_template_formatting_a_repeated_list() {
    assert_out_of_fuel("{% set a = 'x' * 1000000 %}{{ (([a] * 100000) ~ '')|length }}");
    assert_out_of_fuel("{% set a = 'x' * 1000000 %}{{ ('%s'|format([a] * 100000))|length }}");
    // Small items, many of them: numbers pay their printed length too.
    assert_out_of_fuel("{{ (([[0] * 100000000] * 100) ~ '')|length }}");
    assert_out_of_fuel("{{ (([[none] * 100000000] * 100) ~ '')|length }}");
    let tenfold = "{% set l = l+l+l+l+l+l+l+l+l+l %}";
    assert_out_of_fuel(&format!(
        "{{% set a = 'x' * 1000000 %}}{{% set l = [a,a,a,a,a,a,a,a,a,a] %}}{}{{{{ (l ~ '')|length }}}}",
        tenfold.repeat(4)
    ));
}

#[test]
fn hostile_template_string_repeat() {
    // Overflowing repeat counts are refused (a caught panic or an error), never a crash.
    assert_bounded("{{ 'x' * 10**20 }}");
    assert_bounded("{{ ('x' * 10**6)|length }}");
}

/// `'x' * 10**12` asks for a terabyte in one allocation: refused before it is made.
#[test]
fn hostile_template_string_repeat_huge() {
    assert_refused("{{ ('x' * 10**12)|length }}");
    assert_refused("{{ ('x' * 10**6 * 10**6)|length }}");
}

#[test]
fn hostile_template_unbounded_recursion() {
    assert_bounded("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
}

// --- the published GGUF loader CVE classes, at the parser ------------------------------------------

fn kv(key: &str, v: Value) -> (String, Value) {
    (key.to_owned(), v)
}

fn tensor(name: &str, dims: &[u64], type_id: u32, data: usize) -> writer::TensorSpec {
    writer::TensorSpec { name: name.to_owned(), dims: dims.to_vec(), type_id, data: vec![0; data] }
}

fn small_file() -> Vec<u8> {
    writer::write(
        &[kv("general.architecture", Value::String("llama".into())), kv("general.name", Value::String("x".into()))],
        &[tensor("a", &[8, 4], 0, 128), tensor("b", &[8], 0, 32)],
    )
}

/// Byte offset of the `index`-th tensor info's fields in a file from `small_file` (after the name).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    // Tensor names are written as u64 length + bytes; "a" and "b" are unique single bytes after the metadata.
    let needle: Vec<u8> = [1u64.to_le_bytes().as_slice(), name.as_bytes()].concat();
    let start = bytes.windows(needle.len()).rposition(|w| w == needle.as_slice()).expect("tensor name");
    start + needle.len()
}

fn patch(bytes: &mut [u8], at: usize, raw: &[u8]) {
    bytes[at..at + raw.len()].copy_from_slice(raw);
}

fn refuses(bytes: &[u8]) -> String {
    match gguf::parse(bytes, Path::new("cve.gguf")) {
        Ok(h) => panic!("accepted a hostile header: {} tensors", h.tensors.len()),
        Err(e) => {
            assert_load_error(&e, "cve.gguf");
            e.to_string()
        }
    }
}

#[test]
fn small_file_is_valid() {
    let h = gguf::parse(&small_file(), Path::new("ok.gguf")).unwrap();
    assert_eq!(h.tensors.len(), 2);
}

/// CVE-2024-21802 (Talos 2024): `n_dims` greater than GGML_MAX_DIMS overflowed the fixed dims array.
#[test]
fn cve_2024_21802_n_dims_past_max() {
    for n_dims in [5u32, 64, u32::MAX] {
        let mut bytes = small_file();
        let at = tensor_info_at(&bytes, "a");
        patch(&mut bytes, at, &n_dims.to_le_bytes());
        assert!(refuses(&bytes).contains("dimension"));
    }
}

/// Talos 2024 siblings: a string length of 2^64 - 1 (`n + 1` wraps to a zero-byte allocation).
#[test]
fn talos_2024_string_length_wraps() {
    let mut bytes = small_file();
    patch(&mut bytes, 24, &u64::MAX.to_le_bytes()); // the first key's length
    refuses(&bytes);
    let mut bytes = small_file();
    let at = tensor_info_at(&bytes, "a") - 9; // the tensor name's length
    patch(&mut bytes, at, &u64::MAX.to_le_bytes());
    refuses(&bytes);
}

/// Talos 2024 siblings: array, key-value and tensor counts whose byte size wraps.
#[test]
fn talos_2024_counts_wrap() {
    for count in [1u64 << 61, (1 << 62) + 1, u64::MAX] {
        let mut bytes = small_file();
        patch(&mut bytes, 8, &count.to_le_bytes()); // tensor count
        refuses(&bytes);
        let mut bytes = small_file();
        patch(&mut bytes, 16, &count.to_le_bytes()); // key-value count
        refuses(&bytes);
        let arr = writer::write(&[kv("x", Value::Array(vec![Value::U64(1)]))], &[]);
        let mut arr = arr;
        // magic 4 + version 4 + counts 16 + key (8 + 1) + type 4 + item type 4 = the array count.
        patch(&mut arr, 41, &count.to_le_bytes());
        refuses(&arr);
    }
}

/// CVE-2025-53630: the sum of the tensors' sizes wrapped; CVE-2026-27940: each size (numel × type size,
/// then padding) wrapped before the sum was checked. Both gave an undersized buffer.
#[test]
fn cve_2025_53630_and_2026_27940_size_arithmetic_wraps() {
    let dims_cases: [&[u64]; 5] = [
        &[1 << 61],                            // 2^63 bytes of F32: fits u64 but not the file
        &[1 << 32, 1 << 32],                   // numel 2^64 wraps to 0
        &[(1 << 62) - 1],                      // 2^64 - 4 bytes: padding to 32 wraps to 0
        &[1 << 21, 1 << 21, 1 << 21, 1 << 21], // 2^84 elements
        &[8, (1 << 42) + 1],                   // llama.cpp #18674's dim
    ];
    for dims in dims_cases {
        let bytes = writer::write(&[], &[tensor("a", dims, 0, 0)]);
        refuses(&bytes);
    }
    // Two tensors of 2^63 bytes each: their sum wraps to 0.
    let mut bytes = writer::write(&[], &[tensor("a", &[1 << 61], 0, 0), tensor("b", &[1 << 61], 0, 0)]);
    let at = tensor_info_at(&bytes, "b") + 4 + 8 + 4;
    patch(&mut bytes, at, &(1u64 << 63).to_le_bytes());
    refuses(&bytes);
    // Q8_0 (34 bytes per 32 elements): a block count whose byte size wraps.
    let blocks = u64::MAX / 34 + 1;
    let bytes = writer::write(&[], &[tensor("q", &[blocks * 32], 8, 0)]);
    refuses(&bytes);
}

/// CVE-2026-7482 "Bleeding Llama": dims and offsets that claim more data than the file holds.
#[test]
fn cve_2026_7482_dims_lie_about_the_data() {
    let bytes = small_file();
    // Cut the data: the last tensor runs past the end.
    refuses(&bytes[..bytes.len() - 1]);
    // The last tensor's offset moved past the end, or to where offset + size wraps.
    for offset in [1u64 << 20, u64::MAX - 31, u64::MAX - 63] {
        let mut bytes = small_file();
        let at = tensor_info_at(&bytes, "b") + 4 + 8 + 4;
        patch(&mut bytes, at, &offset.to_le_bytes());
        refuses(&bytes);
    }
    // Dims that claim 1024× the rows the data holds.
    let mut bytes = small_file();
    let at = tensor_info_at(&bytes, "b") + 4;
    patch(&mut bytes, at, &(8u64 * 1024).to_le_bytes());
    refuses(&bytes);
}

// --- proptest: the fuzz targets' short mode --------------------------------------------------------

fn seeds(target: &str) -> Vec<Vec<u8>> {
    corpus(target).into_iter().map(|(_, b)| b).collect()
}

/// A seed with a few bytes overwritten, a range cut out, or a random 8-byte field set to a lying value.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let inputs = seeds(target);
    let n = inputs.len().max(1);
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
        0..4u8,
    )
        .prop_map(move |(which, flips, at, lie)| {
            let mut bytes = inputs.get(which).cloned().unwrap_or_default();
            if bytes.is_empty() {
                return bytes;
            }
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            let at = at.index(bytes.len());
            match lie {
                0 => bytes.truncate(at),
                1 if at + 8 <= bytes.len() => patch(&mut bytes, at, &u64::MAX.to_le_bytes()),
                2 if at + 8 <= bytes.len() => patch(&mut bytes, at, &(1u64 << 62).to_le_bytes()),
                _ => {}
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_gguf_parse(bytes in mutated("gguf_parse")) {
        check_gguf(&bytes);
    }

    #[test]
    fn prop_safetensors_parse(bytes in mutated("safetensors_parse")) {
        check_safetensors(&bytes);
    }

    #[test]
    fn prop_gguf_tokenizer(bytes in mutated("gguf_tokenizer")) {
        check_tokenizer(&bytes);
    }

    #[test]
    fn prop_chat_template(bytes in mutated("chat_template")) {
        check_template(&bytes);
    }

    #[test]
    fn prop_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_gguf(&bytes);
        check_safetensors(&bytes);
        let mut magic = b"GGUF\x03\0\0\0".to_vec();
        magic.extend(&bytes);
        check_gguf(&magic);
    }
}

// --- a mapped file changed on disk -----------------------------------------------------------------

/// A file truncated (or replaced) while mapped is mapped afresh for the next user, never read through the
/// stale mapping (whose lost pages would raise SIGBUS); the old mapping stays valid for its holder.
#[test]
fn changed_file_is_mapped_afresh() {
    use modelhost_core::storage::{self, FileBytes};
    let dir = std::env::temp_dir().join(format!("mh-hostile-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
    let first = storage::map_shared(&path).unwrap();
    let again = storage::map_shared(&path).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "an unchanged file shares its mapping");
    drop(again);
    let count = storage::mapped_file_count();

    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1024).unwrap();
    let second = FileBytes::Mapped(storage::map_shared(&path).unwrap());
    assert_eq!(second.as_slice().len(), 1024, "the truncated file was not mapped afresh");
    assert!(storage::check_unchanged(&FileBytes::Mapped(first.clone())).is_err());
    assert_eq!(storage::mapped_file_count(), count + 1, "both mappings are alive and counted");

    // Replaced by a new file of the same length (a rename over it): a new inode, mapped afresh.
    let tmp = dir.join("m.tmp");
    std::fs::write(&tmp, vec![9u8; 1024]).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let third = FileBytes::Mapped(storage::map_shared(&path).unwrap());
    assert_eq!(third.as_slice()[0], 9, "a replaced file was served from the old mapping");
    drop((first, second, third));
    assert_eq!(storage::mapped_file_count(), count - 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- a file truncated while the host reads its header ------------------------------------------------

/// Set in the child process of `planning_loads_of_a_file_truncated_meanwhile_never_crashes`: the file to plan.
const TRUNCATION_CHILD: &str = "MODELHOST_TEST_TRUNCATION_CHILD";

fn smollm2_path() -> PathBuf {
    let dir = std::env::var_os("MODELHOST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/modelhost/models"));
    dir.join("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Planning a load (`Host::estimate`, as every load does first) maps the file to read its header: a file truncated
/// meanwhile must give an error, never a SIGBUS. In a child process (a SIGBUS would kill the test harness), a
/// thread truncates the header of a copy of SmolLM2 and writes it back as fast as it can while the host plans loads
/// of it; the child must exit normally.
#[test]
fn planning_loads_of_a_file_truncated_meanwhile_never_crashes() {
    use std::os::unix::process::ExitStatusExt;
    if let Some(path) = std::env::var_os(TRUNCATION_CHILD) {
        return plan_while_truncating(Path::new(&path));
    }
    let real = smollm2_path();
    let bytes =
        std::fs::read(&real).unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch_models.py)", real.display()));
    let header = gguf::parse(&bytes, &real).unwrap();
    let dir = std::env::temp_dir().join(format!("mh-truncated-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The header only, the tensor data a hole: planning reads nothing past the header.
    let copy = dir.join("smollm2-header.gguf");
    std::fs::write(&copy, &bytes[..header.data_offset]).unwrap();
    std::fs::OpenOptions::new().write(true).open(&copy).unwrap().set_len(bytes.len() as u64).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "planning_loads_of_a_file_truncated_meanwhile_never_crashes", "--nocapture"])
        .env(TRUNCATION_CHILD, &copy)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        child.status.success(),
        "the child died ({:?}, signal {:?}; SIGBUS is {}):\n{}",
        child.status,
        child.status.signal(),
        libc::SIGBUS,
        String::from_utf8_lossy(&child.stderr)
    );
}

fn plan_while_truncating(path: &Path) {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use modelhost_core::{Host, HostOptions, LoadConfig, ModelKind};
    /// Truncations to plan through, and a bound on the plans (so a stuck truncator cannot hang the test).
    const TRUNCATIONS: usize = 1500;
    const MAX_PLANS: usize = 100_000;
    let bytes = std::fs::read(path).unwrap();
    let header_end = gguf::parse(&bytes, path).unwrap().data_offset;
    let (stop, cycles) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let truncator = {
        let (stop, cycles, path) = (stop.clone(), cycles.clone(), path.to_path_buf());
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            while !stop.load(Ordering::Relaxed) {
                file.set_len(4096).unwrap();
                file.write_all_at(&bytes[4096..header_end], 4096).unwrap();
                file.set_len(bytes.len() as u64).unwrap();
                cycles.fetch_add(1, Ordering::Relaxed);
                // Intact for a moment, so that plans also start on a whole file and lose it while they read.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let host = Host::new(path.parent().unwrap().to_path_buf(), HostOptions::default()).unwrap();
    let key = path.to_str().unwrap();
    let (mut planned, mut refused) = (0, 0);
    for _ in 0..MAX_PLANS {
        if cycles.load(Ordering::Relaxed) >= TRUNCATIONS {
            break;
        }
        match host.estimate(ModelKind::Llm, key, &LoadConfig::default()) {
            Ok(_) => planned += 1,
            Err(Error::ModelLoad { .. }) => refused += 1,
            Err(other) => panic!("a truncated header gave {other:?}, not a ModelLoad error"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    truncator.join().unwrap();
    eprintln!("{planned} plans, {refused} refused, over {} truncations", cycles.load(Ordering::Relaxed));
    assert!(planned > 0, "no plan ever saw the whole file");
}
