//! Route53 hosted zones and their record sets, as deterministic JSON documents (sorted keys,
//! records in the service's order, nothing volatile), and back (ChangeResourceRecordSets).

use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, CidrRoutingConfig, Coordinates, GeoLocation,
    GeoProximityLocation, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;
use serde_json::{json, Map, Value};

use crate::aws::AwsConfig;
use crate::error::{Error, Result};

pub use aws_sdk_route53 as sdk;

/// What one ChangeResourceRecordSets request may carry: 1,000 ResourceRecord elements and
/// 32,000 characters of values, an UPSERT counting twice.
const BATCH_RECORDS: usize = 1000;
const BATCH_CHARS: usize = 32_000;

/// A hosted zone: its id (without `/hostedzone/`), name, comment and privacy.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    pub id: String,
    pub name: String,
    pub comment: Option<String>,
    pub private: bool,
}

impl Zone {
    pub fn to_json(&self) -> Value {
        json!({"Id": self.id, "Name": self.name, "Comment": self.comment, "PrivateZone": self.private})
    }
}

pub struct Route53 {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Requests sent.
    pub requests: std::sync::atomic::AtomicU64,
}

fn sdk_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("Route53: {what}: {e}"))
}

fn count(r: &Route53) {
    r.requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Route53 {
    pub fn new(cfg: &AwsConfig) -> Result<Self> {
        let rt = crate::aws::runtime("chunkbak-route53")?;
        let client = rt.block_on(async {
            let shared = crate::aws::shared_config(cfg).await;
            let mut b = aws_sdk_route53::config::Builder::from(&shared);
            if shared.region().is_none() {
                b = b.region(aws_config::Region::new("us-east-1"));
            }
            if let Some(ep) = &cfg.endpoint {
                b = b.endpoint_url(ep.clone());
            }
            Client::from_conf(b.build())
        });
        Ok(Route53 {
            rt,
            client,
            requests: Default::default(),
        })
    }

    /// The SDK client (tests create zones with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future of the SDK on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Every hosted zone, by name then id.
    pub fn zones(&self) -> Result<Vec<Zone>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                count(self);
                let r = self
                    .client
                    .list_hosted_zones()
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            "listing the hosted zones",
                            aws_sdk_route53::error::DisplayErrorContext(&e),
                        )
                    })?;
                for z in r.hosted_zones() {
                    out.push(Zone {
                        id: z.id().trim_start_matches("/hostedzone/").to_string(),
                        name: z.name().to_string(),
                        comment: z.config().and_then(|c| c.comment()).map(str::to_string),
                        private: z.config().is_some_and(|c| c.private_zone()),
                    });
                }
                match (r.is_truncated(), r.next_marker()) {
                    (true, Some(m)) => marker = Some(m.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            Ok(out)
        })
    }

    /// Every record set of the zone, in the service's order.
    pub fn records(&self, zone_id: &str) -> Result<Vec<ResourceRecordSet>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut next: (Option<String>, Option<RrType>, Option<String>) = (None, None, None);
            loop {
                count(self);
                let r = self
                    .client
                    .list_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .set_start_record_name(next.0.take())
                    .set_start_record_type(next.1.take())
                    .set_start_record_identifier(next.2.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            &format!("listing the records of {zone_id}"),
                            aws_sdk_route53::error::DisplayErrorContext(&e),
                        )
                    })?;
                out.extend(r.resource_record_sets().iter().cloned());
                if !r.is_truncated() {
                    break;
                }
                if r.next_record_name().is_none() {
                    return Err(Error::Other(format!(
                        "Route53: the records of {zone_id} are truncated without a next name: \
                         not backed up incomplete"
                    )));
                }
                next = (
                    r.next_record_name().map(str::to_string),
                    r.next_record_type().cloned(),
                    r.next_record_identifier().map(str::to_string),
                );
                if next.0.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// UPSERTs `sets` into the zone, in batches; the number of requests sent.
    pub fn upsert(
        &self,
        zone_id: &str,
        sets: Vec<ResourceRecordSet>,
        comment: &str,
    ) -> Result<u64> {
        // Batches within the request quotas (an UPSERT's records and characters count twice).
        let weight = |s: &ResourceRecordSet| {
            let rs = s.resource_records();
            (
                2 * rs.len().max(1),
                2 * rs.iter().map(|r| r.value().len()).sum::<usize>(),
            )
        };
        let mut batches: Vec<Vec<ResourceRecordSet>> = vec![Vec::new()];
        let (mut records, mut chars) = (0, 0);
        for s in sets {
            let (r, c) = weight(&s);
            let last = batches.last_mut().expect("one batch");
            if !last.is_empty() && (records + r > BATCH_RECORDS || chars + c > BATCH_CHARS) {
                batches.push(Vec::new());
                (records, chars) = (0, 0);
            }
            records += r;
            chars += c;
            batches.last_mut().expect("one batch").push(s);
        }
        let total = batches.len();
        let mut n = 0;
        for (k, batch) in batches.iter().filter(|b| !b.is_empty()).enumerate() {
            let changes: Vec<Change> = batch
                .iter()
                .map(|s| {
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(s.clone())
                        .build()
                        .map_err(|e| sdk_error("building a change", e))
                })
                .collect::<Result<_>>()?;
            let cb = ChangeBatch::builder()
                .comment(comment)
                .set_changes(Some(changes))
                .build()
                .map_err(|e| sdk_error("building a change batch", e))?;
            count(self);
            self.rt
                .block_on(
                    self.client
                        .change_resource_record_sets()
                        .hosted_zone_id(zone_id)
                        .change_batch(cb)
                        .send(),
                )
                .map_err(|e| {
                    sdk_error(
                        &format!(
                            "changing the records of {zone_id} (request {} of {total}; the {k} \
                             before it were applied)",
                            k + 1
                        ),
                        aws_sdk_route53::error::DisplayErrorContext(&e),
                    )
                })?;
            n += 1;
        }
        Ok(n)
    }
}

/// A record set as a JSON document: the API's field names, only the fields set, keys sorted.
pub fn record_json(s: &ResourceRecordSet) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), s.name().into());
    m.insert("Type".into(), s.r#type().as_str().into());
    if let Some(t) = s.ttl() {
        m.insert("TTL".into(), t.into());
    }
    let values: Vec<Value> = s
        .resource_records()
        .iter()
        .map(|r| r.value().into())
        .collect();
    if !values.is_empty() {
        m.insert("ResourceRecords".into(), values.into());
    }
    if let Some(a) = s.alias_target() {
        m.insert(
            "AliasTarget".into(),
            json!({"HostedZoneId": a.hosted_zone_id(), "DNSName": a.dns_name(),
                   "EvaluateTargetHealth": a.evaluate_target_health()}),
        );
    }
    if let Some(v) = s.set_identifier() {
        m.insert("SetIdentifier".into(), v.into());
    }
    if let Some(v) = s.weight() {
        m.insert("Weight".into(), v.into());
    }
    if let Some(v) = s.region() {
        m.insert("Region".into(), v.as_str().into());
    }
    if let Some(v) = s.failover() {
        m.insert("Failover".into(), v.as_str().into());
    }
    if let Some(v) = s.multi_value_answer() {
        m.insert("MultiValueAnswer".into(), v.into());
    }
    if let Some(v) = s.health_check_id() {
        m.insert("HealthCheckId".into(), v.into());
    }
    if let Some(g) = s.geo_location() {
        m.insert(
            "GeoLocation".into(),
            json!({"ContinentCode": g.continent_code(), "CountryCode": g.country_code(),
                   "SubdivisionCode": g.subdivision_code()}),
        );
    }
    if let Some(g) = s.geo_proximity_location() {
        m.insert(
            "GeoProximityLocation".into(),
            json!({"AWSRegion": g.aws_region(), "LocalZoneGroup": g.local_zone_group(), "Bias": g.bias(),
                   "Coordinates": g.coordinates().map(|c| json!({"Latitude": c.latitude(), "Longitude": c.longitude()}))}),
        );
    }
    if let Some(c) = s.cidr_routing_config() {
        m.insert(
            "CidrRoutingConfig".into(),
            json!({"CollectionId": c.collection_id(), "LocationName": c.location_name()}),
        );
    }
    if let Some(v) = s.traffic_policy_instance_id() {
        m.insert("TrafficPolicyInstanceId".into(), v.into());
    }
    Value::Object(m)
}

/// The record set a document of [`record_json`] describes.
pub fn record_from_json(v: &Value) -> Result<ResourceRecordSet> {
    let bad = |what: &str| Error::Invalid(format!("record document: {what}"));
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let mut b = ResourceRecordSet::builder()
        .name(s("Name").ok_or_else(|| bad("no Name"))?)
        .r#type(RrType::from(s("Type").ok_or_else(|| bad("no Type"))?));
    if let Some(t) = v.get("TTL").and_then(Value::as_i64) {
        b = b.ttl(t);
    }
    if let Some(rs) = v.get("ResourceRecords").and_then(Value::as_array) {
        for r in rs {
            let value = r
                .as_str()
                .ok_or_else(|| bad("a record value is not text"))?;
            b = b.resource_records(
                ResourceRecord::builder()
                    .value(value)
                    .build()
                    .map_err(|e| bad(&e.to_string()))?,
            );
        }
    }
    if let Some(a) = v.get("AliasTarget") {
        let t = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or_default();
        b = b.alias_target(
            AliasTarget::builder()
                .hosted_zone_id(t("HostedZoneId"))
                .dns_name(t("DNSName"))
                .evaluate_target_health(
                    a.get("EvaluateTargetHealth")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                )
                .build()
                .map_err(|e| bad(&e.to_string()))?,
        );
    }
    if let Some(x) = s("SetIdentifier") {
        b = b.set_identifier(x);
    }
    if let Some(x) = v.get("Weight").and_then(Value::as_i64) {
        b = b.weight(x);
    }
    if let Some(x) = s("Region") {
        b = b.region(x.into());
    }
    if let Some(x) = s("Failover") {
        b = b.failover(x.into());
    }
    if let Some(x) = v.get("MultiValueAnswer").and_then(Value::as_bool) {
        b = b.multi_value_answer(x);
    }
    if let Some(x) = s("HealthCheckId") {
        b = b.health_check_id(x);
    }
    let text = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(g) = v.get("GeoLocation") {
        b = b.geo_location(
            GeoLocation::builder()
                .set_continent_code(text(g, "ContinentCode"))
                .set_country_code(text(g, "CountryCode"))
                .set_subdivision_code(text(g, "SubdivisionCode"))
                .build(),
        );
    }
    if let Some(g) = v.get("GeoProximityLocation") {
        let coordinates = match g.get("Coordinates").filter(|c| !c.is_null()) {
            Some(c) => Some(
                Coordinates::builder()
                    .set_latitude(text(c, "Latitude"))
                    .set_longitude(text(c, "Longitude"))
                    .build()
                    .map_err(|e| bad(&e.to_string()))?,
            ),
            None => None,
        };
        b = b.geo_proximity_location(
            GeoProximityLocation::builder()
                .set_aws_region(text(g, "AWSRegion"))
                .set_local_zone_group(text(g, "LocalZoneGroup"))
                .set_bias(g.get("Bias").and_then(Value::as_i64).map(|x| x as i32))
                .set_coordinates(coordinates)
                .build(),
        );
    }
    if let Some(c) = v.get("CidrRoutingConfig") {
        b = b.cidr_routing_config(
            CidrRoutingConfig::builder()
                .set_collection_id(text(c, "CollectionId"))
                .set_location_name(text(c, "LocationName"))
                .build()
                .map_err(|e| bad(&e.to_string()))?,
        );
    }
    if let Some(x) = s("TrafficPolicyInstanceId") {
        b = b.traffic_policy_instance_id(x);
    }
    b.build().map_err(|e| bad(&e.to_string()))
}

/// The file name of a record set's document: name, type and set identifier, with `/` and
/// the characters a shell treats specially escaped.
pub fn record_file_name(v: &Value) -> String {
    let esc = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c.to_string(),
                c => format!("%{:02X}", c as u32),
            })
            .collect()
    };
    let mut parts = vec![
        esc(v["Name"].as_str().unwrap_or_default()),
        esc(v["Type"].as_str().unwrap_or_default()),
    ];
    if let Some(id) = v["SetIdentifier"].as_str() {
        parts.push(esc(id));
    }
    parts.join("_") + ".json"
}

/// The zone as a BIND zone file, for people (aliases as comments: BIND has no such record).
pub fn bind_file(zone: &Zone, sets: &[Value]) -> String {
    let mut out = format!(
        "; {} ({}), written by chunkbak\n$ORIGIN {}\n",
        zone.name, zone.id, zone.name
    );
    for s in sets {
        let name = s["Name"].as_str().unwrap_or_default();
        let ty = s["Type"].as_str().unwrap_or_default();
        let ttl = s["TTL"].as_i64().unwrap_or(300);
        let tag = s["SetIdentifier"]
            .as_str()
            .map(|i| format!(" ; set {i}"))
            .unwrap_or_default();
        if let Some(a) = s.get("AliasTarget") {
            out.push_str(&format!(
                "; {name} {ty} ALIAS {} (zone {}){tag}\n",
                a["DNSName"].as_str().unwrap_or_default(),
                a["HostedZoneId"].as_str().unwrap_or_default()
            ));
            continue;
        }
        for r in s["ResourceRecords"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{name}\t{ttl}\tIN\t{ty}\t{}{tag}\n",
                r.as_str().unwrap_or_default()
            ));
        }
    }
    out
}
