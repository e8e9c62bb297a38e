//! The generator of `control/server/proto/kubernetes.fds`, the descriptor set the
//! protobuf decoder reads, and the test that keeps that file current.
//!
//! No registry package ships Kubernetes' `generated.proto` files or their descriptors,
//! but two ship what they were generated into: k8s-pb's prost bindings carry every
//! message, field number, wire type and message reference (in `#[prost(...)]`
//! attributes and field types), and k8s-openapi's serde code carries every field's JSON
//! name and whether it is optional. This module reads both crates' sources (found with
//! `cargo metadata`) and writes one `FileDescriptorProto` per Kubernetes package, with
//! upstream's full names (`k8s.io.api.core.v1.HTTPGetAction`: k8s-openapi's struct name
//! where prost renamed it `HttpGetAction`):
//!
//! - `json_name` is the k8s-openapi name (`podIP`, `$ref`, `x-kubernetes-...`), matched
//!   by letters and digits; a field of a struct k8s-openapi lacks (embedded ones such as
//!   `VolumeSource`) or newer than its Kubernetes version takes the name any of its
//!   structs gives those letters (`scaleIO`), else prost's lowerCamelCase.
//! - a message field whose name k8s-openapi's struct lacks while that struct has most
//!   of the field type's members is an embedded Go struct whose fields JSON inlines (a
//!   Probe's `ProbeHandler`, an Ingress rule's `IngressRuleValue`): its `json_name` is
//!   [`INLINE`].
//! - a field that is not an `Option` in k8s-openapi (a required one: `port`, a
//!   PriorityClass' `value`) is `LABEL_REQUIRED`, which tells the decoder that its zero
//!   value is a value.
//!
//! The output is checked in rather than built by a build script, which has no reliable
//! way to find another crate's sources; the test fails when it is stale (a new k8s-pb
//! or k8s-openapi). Test code only: the server reads the file, never these crates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MessageOptions};

use super::INLINE;

/// The k8s-openapi feature (Kubernetes version) the workspace builds with.
const OPENAPI_VERSION: &str = "v1_33";
/// Where the generated file lives, from the crate's directory.
const OUTPUT: &str = "proto/kubernetes.fds";

/// A field as k8s-openapi knows it: JSON name and whether it is required.
struct JsonField {
    name: String,
    required: bool,
}

/// Letters and digits, lowercased: how a prost field name and a JSON name are matched.
fn norm(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            if i == 0 {
                out.push(f);
            } else {
                out.push(f.to_ascii_uppercase());
            }
            out.extend(c);
        }
    }
    out
}

fn upper_camel(snake: &str) -> String {
    let l = lower_camel(snake);
    let mut c = l.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// Whether a JSON name can be the one prost turned into `snake`: prost starts a word at
/// each capital, so each word after the first must start with one (`scale_io` fits
/// `scaleIO`; `sub_resource` does not fit `subresource`). Names with other characters
/// (`$ref`, `x-kubernetes-...`) fit.
fn fits_words(snake: &str, name: &str) -> bool {
    if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return true;
    }
    let chars: Vec<char> = name.chars().collect();
    let mut at = 0;
    snake.split('_').enumerate().all(|(i, word)| {
        let ok = i == 0 || chars.get(at).is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        at += word.len();
        ok
    })
}

/// The source directories of k8s-pb and of k8s-openapi's Kubernetes version.
fn sources() -> (PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = |name: &str| {
        let p = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the dependency graph"));
        PathBuf::from(p["manifest_path"].as_str().unwrap()).parent().unwrap().join("src")
    };
    (dir("k8s-pb"), dir("k8s-openapi").join(OPENAPI_VERSION))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// k8s-openapi's structs by (module directory relative to the version, [`norm`] of
/// the struct's name): its name (upstream's: `HTTPGetAction` where prost says
/// `HttpGetAction`) and fields.
type OpenApi = HashMap<(String, String), (String, Vec<JsonField>)>;

fn openapi_structs(root: &Path) -> OpenApi {
    let struct_re = regex::Regex::new(r"(?m)^pub struct (\w+) \{").unwrap();
    let field_re = regex::Regex::new(r"(?m)^    pub (?:r#)?(\w+): (.*),$").unwrap();
    let key_re = regex::Regex::new(r#""([^"]+)" => Field::Key_(\w+),"#).unwrap();
    let mut files = Vec::new();
    rust_files(root, &mut files);
    // In order, so that the first of two same-named structs is always the same one.
    files.sort();
    let mut out = HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let Some(s) = struct_re.captures(&text) else { continue };
        let body_start = s.get(0).unwrap().end();
        let body = &text[body_start..body_start + text[body_start..].find("\n}").unwrap_or(0)];
        let optional: HashMap<&str, bool> =
            field_re.captures_iter(body).map(|c| (c.get(1).unwrap().as_str(), c[2].starts_with("Option<"))).collect();
        let fields = key_re
            .captures_iter(&text)
            .map(|c| JsonField {
                name: c[1].to_string(),
                required: optional.get(c.get(2).unwrap().as_str()).is_some_and(|o| !o),
            })
            .collect::<Vec<_>>();
        let dir = f.parent().unwrap().strip_prefix(root).unwrap().to_string_lossy().replace('/', ".");
        out.entry((dir, norm(&s[1]))).or_insert((s[1].to_string(), fields));
    }
    out
}

/// One field of a k8s-pb struct before JSON names are matched.
struct PbField {
    name: String,
    tag: i32,
    label: Label,
    ty: Type,
    /// The full name of a message field's type (or of a map's message values).
    type_name: Option<String>,
    /// The value type of a `map<string, V>`.
    map_value: Option<Type>,
}

/// The protobuf package of a k8s-pb module directory (`api/apps/v1`).
fn package(dirs: &[String]) -> String {
    format!("k8s.io.{}", dirs.join("."))
}

/// The message a Rust type names: the innermost path under Option, Vec, Box or (for a
/// map's value) BTreeMap, resolved against the module's directories.
fn message_type(ty: &syn::Type, dirs: &[String]) -> Option<String> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
        let inner = a.args.iter().rev().find_map(|g| match g {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        })?;
        return message_type(inner, dirs);
    }
    let mut base = dirs.to_vec();
    let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
    let mut rest = &segs[..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    if rest.first().is_some_and(|s| s == "crate") {
        base.clear();
        rest = &rest[1..];
    }
    let (name, path) = rest.split_last()?;
    base.extend(path.iter().cloned());
    Some(format!("{}.{name}", package(&base)))
}

fn scalar(s: &str) -> Type {
    match s.trim() {
        "string" => Type::String,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "bool" => Type::Bool,
        "double" => Type::Double,
        "bytes" => Type::Bytes,
        "message" => Type::Message,
        other => panic!("unknown prost type {other:?}"),
    }
}

/// The fields of one prost struct, from its `#[prost(...)]` attributes.
fn pb_fields(s: &syn::ItemStruct, dirs: &[String]) -> Vec<PbField> {
    let mut out = Vec::new();
    for f in &s.fields {
        let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("prost")) else { continue };
        let syn::Meta::List(list) = &attr.meta else { continue };
        let text = list.tokens.to_string();
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let tag = parts
            .iter()
            .find_map(|p| p.strip_prefix("tag = \""))
            .and_then(|t| t.trim_end_matches('"').parse().ok())
            .expect("a prost field without a tag");
        let name = f.ident.as_ref().unwrap().to_string().trim_start_matches("r#").to_string();
        let type_name = message_type(&f.ty, dirs);
        let field = if let Some(m) = text.strip_prefix("btree_map = \"") {
            let value = m.split('"').next().unwrap().split(',').nth(1).unwrap();
            let value = scalar(value);
            PbField {
                name,
                tag,
                label: Label::Repeated,
                ty: Type::Message,
                type_name: (value == Type::Message).then_some(type_name).flatten(),
                map_value: Some(value),
            }
        } else {
            let ty = scalar(parts[0].split('=').next().unwrap());
            let label = if parts.contains(&"repeated") { Label::Repeated } else { Label::Optional };
            PbField {
                name,
                tag,
                label,
                ty,
                type_name: (ty == Type::Message).then_some(type_name).flatten(),
                map_value: None,
            }
        };
        out.push(field);
    }
    out
}

fn field(
    name: &str,
    number: i32,
    label: Label,
    ty: Type,
    type_name: Option<String>,
    json: String,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(label as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(|t| format!(".{t}")),
        json_name: Some(json),
        ..Default::default()
    }
}

/// A k8s-pb struct: its module's directories, its prost name, its fields.
struct PbStruct {
    dirs: Vec<String>,
    name: String,
    fields: Vec<PbField>,
}

/// How many of a struct's fields JSON shows among `json`'s names, counting through
/// embedded structs of its own (two levels deep: messages nest recursively); and how
/// many fields it has.
fn coverage(structs: &BTreeMap<String, PbStruct>, full: &str, json: &[JsonField], depth: u32) -> (usize, usize) {
    let members = &structs[full].fields;
    let found = members
        .iter()
        .filter(|m| {
            json.iter().any(|k| norm(&k.name) == norm(&m.name))
                || (depth < 2 && m.ty == Type::Message && m.map_value.is_none() && {
                    let (f, n) = coverage(structs, m.type_name.as_ref().unwrap(), json, depth + 1);
                    n > 0 && 2 * f > n
                })
        })
        .count();
    (found, members.len())
}

/// Builds the descriptor set from the two crates' sources.
pub(super) fn generate() -> FileDescriptorSet {
    let (pb_root, openapi_root) = sources();
    let openapi = openapi_structs(&openapi_root);
    // Every JSON name k8s-openapi knows, for the messages it has no struct of (the
    // embedded `VolumeSource` has `scaleIO` and `downwardAPI`).
    let mut all_names: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (_, fields) in openapi.values() {
        for f in fields {
            all_names.entry(norm(&f.name)).or_default().insert(f.name.clone());
        }
    }
    let any_struct_name = |snake: &str| {
        let camel = lower_camel(snake);
        let fits = |name: &&String| fits_words(snake, name);
        match all_names.get(&norm(snake)).and_then(|names| names.iter().find(fits)) {
            Some(name) if !all_names[&norm(snake)].contains(&camel) => name.clone(),
            _ => camel,
        }
    };
    let mut files = Vec::new();
    rust_files(&pb_root, &mut files);
    files.sort();
    // Every struct first: an embedded struct's members and every message's upstream
    // name must be known before any message is written.
    let mut structs: BTreeMap<String, PbStruct> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if !text.contains("::prost::Message)]") {
            continue;
        }
        let dirs: Vec<String> = f
            .parent()
            .unwrap()
            .strip_prefix(&pb_root)
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", f.display()));
        for item in parsed.items {
            if let syn::Item::Struct(s) = item {
                let full = format!("{}.{}", package(&dirs), s.ident);
                let fields = pb_fields(&s, &dirs);
                structs.insert(full, PbStruct { dirs: dirs.clone(), name: s.ident.to_string(), fields });
            }
        }
    }
    let json_of = |st: &PbStruct| openapi.get(&(st.dirs.join("."), norm(&st.name)));
    // Upstream's message names where k8s-openapi has the struct (prost renamed
    // `HTTPGetAction` to `HttpGetAction`).
    let upstream = |full: &str| -> String {
        let st = &structs[full];
        let name = json_of(st).map_or(st.name.as_str(), |(n, _)| n.as_str());
        format!("{}.{name}", package(&st.dirs))
    };
    let mut by_package: BTreeMap<String, (BTreeSet<String>, Vec<DescriptorProto>)> = BTreeMap::new();
    for (full, st) in &structs {
        let json = json_of(st).map(|(_, fields)| fields.as_slice());
        let short = upstream(full).rsplit('.').next().unwrap().to_string();
        let mut message = DescriptorProto { name: Some(short.clone()), ..Default::default() };
        let (deps, messages) = by_package.entry(package(&st.dirs)).or_default();
        for f in &st.fields {
            let known = json.and_then(|j| j.iter().find(|k| norm(&k.name) == norm(&f.name)));
            let embedded = known.is_none()
                && f.ty == Type::Message
                && f.map_value.is_none()
                && json.is_some_and(|j| {
                    let (found, n) = coverage(&structs, f.type_name.as_ref().unwrap(), j, 0);
                    n > 0 && 2 * found > n
                });
            let json_name = match known {
                Some(k) => k.name.clone(),
                None if embedded => INLINE.to_string(),
                None => any_struct_name(&f.name),
            };
            let label =
                if known.is_some_and(|k| k.required) && f.label == Label::Optional { Label::Required } else { f.label };
            let type_name = f.type_name.as_deref().map(&upstream);
            if let Some(t) = &type_name {
                let pkg = &t[..t.rfind('.').unwrap()];
                if *pkg != package(&st.dirs) {
                    deps.insert(pkg.to_string());
                }
            }
            let Some(value) = f.map_value else {
                message.field.push(field(&f.name, f.tag, label, f.ty, type_name, json_name));
                continue;
            };
            let entry = format!("{}Entry", upper_camel(&f.name));
            message.nested_type.push(DescriptorProto {
                name: Some(entry.clone()),
                field: vec![
                    field("key", 1, Label::Optional, Type::String, None, "key".into()),
                    field("value", 2, Label::Optional, value, type_name, "value".into()),
                ],
                options: Some(MessageOptions { map_entry: Some(true), ..Default::default() }),
                ..Default::default()
            });
            let entry_type = format!("{}.{short}.{entry}", package(&st.dirs));
            message.field.push(field(&f.name, f.tag, Label::Repeated, Type::Message, Some(entry_type), json_name));
        }
        messages.push(message);
    }
    // Dependencies before dependents, as a descriptor pool adds them.
    let file_name = |pkg: &str| format!("{}/generated.proto", pkg.replace('.', "/"));
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    while done.len() < by_package.len() {
        let before = done.len();
        for (pkg, (deps, messages)) in &by_package {
            if done.contains(pkg) || !deps.iter().all(|d| done.contains(d)) {
                continue;
            }
            out.push(FileDescriptorProto {
                name: Some(file_name(pkg)),
                package: Some(pkg.clone()),
                dependency: deps.iter().map(|d| file_name(d)).collect(),
                message_type: messages.clone(),
                syntax: Some("proto2".into()),
                ..Default::default()
            });
            done.insert(pkg.clone());
        }
        assert!(done.len() > before, "cyclic package dependencies");
    }
    FileDescriptorSet { file: out }
}

/// The checked-in descriptor set must be what the crates in Cargo.lock give; with
/// `SKIFF_REGENERATE_PROTO=1` the test writes it instead.
#[test]
fn descriptor_set_is_current() {
    let bytes = generate().encode_to_vec();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(OUTPUT);
    if std::env::var_os("SKIFF_REGENERATE_PROTO").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == bytes,
        "{} is stale (k8s-pb or k8s-openapi changed): run `SKIFF_REGENERATE_PROTO=1 cargo test -p skiff-control --lib descriptor_set_is_current`",
        path.display()
    );
    prost_reflect::DescriptorPool::decode(bytes.as_slice()).expect("the generated descriptor set is valid");
}
