//! Load balancer configuration as deterministic JSON documents: classic ELBs
//! (elasticloadbalancing) and ALB/NLB/GWLB (elasticloadbalancingv2) with their listeners,
//! rules, target groups, attributes and tags. Keys are sorted; volatile fields (creation
//! times, state) are left out.

use aws_sdk_elasticloadbalancing as elb;
use aws_sdk_elasticloadbalancingv2 as elbv2;
use serde_json::{json, Value};

use crate::aws::AwsConfig;
use crate::error::{Error, Result};

pub use aws_sdk_elasticloadbalancing as sdk_classic;
pub use aws_sdk_elasticloadbalancingv2 as sdk_v2;

fn sdk_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("Elastic Load Balancing: {what}: {e}"))
}

/// The error of a classic request about `what`, with its context.
pub(crate) fn classic_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    what: String,
) -> impl FnOnce(elb::error::SdkError<E, R>) -> Error {
    move |e| sdk_error(&what, elb::error::DisplayErrorContext(&e))
}

/// The error of a v2 request about `what`, with its context.
pub(crate) fn v2_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    what: String,
) -> impl FnOnce(elbv2::error::SdkError<E, R>) -> Error {
    move |e| sdk_error(&what, elbv2::error::DisplayErrorContext(&e))
}

pub struct Elb {
    rt: tokio::runtime::Runtime,
    classic: elb::Client,
    v2: elbv2::Client,
    pub region: String,
}

/// A document per resource: (folder under the region, file name, document).
pub type Documents = Vec<(&'static str, String, Value)>;

fn strings(v: &[String]) -> Value {
    let mut v = v.to_vec();
    v.sort();
    v.into()
}

/// Attributes or tags as one sorted JSON object (a missing value is "").
fn key_values<'a>(
    pairs: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> serde_json::Map<String, Value> {
    pairs
        .map(|(k, v)| {
            (
                k.unwrap_or_default().to_string(),
                v.unwrap_or_default().into(),
            )
        })
        .collect()
}

/// A classic load balancer's attributes as its document holds them.
pub(crate) fn classic_attributes(a: &elb::types::LoadBalancerAttributes) -> Value {
    json!({
        "CrossZoneLoadBalancing": a.cross_zone_load_balancing().map(|x| x.enabled()),
        "ConnectionDraining": a.connection_draining().map(|x| json!({"Enabled": x.enabled(), "Timeout": x.timeout()})),
        "ConnectionSettings": a.connection_settings().map(|x| json!({"IdleTimeout": x.idle_timeout()})),
        "AccessLog": a.access_log().map(|x| json!({"Enabled": x.enabled(), "S3BucketName": x.s3_bucket_name(),
                                                     "EmitInterval": x.emit_interval(), "S3BucketPrefix": x.s3_bucket_prefix()})),
    })
}

/// A rule condition: its field and values, and the settings of the fields whose values are
/// not plain (http-header, query-string, http-request-method, source-ip).
fn condition(c: &elbv2::types::RuleCondition) -> Value {
    json!({"Field": c.field(), "Values": strings(c.values()),
           "HttpHeader": c.http_header_config().map(|h| json!({"Name": h.http_header_name(), "Values": h.values()})),
           "QueryString": c.query_string_config().map(|q| q.values().iter()
                .map(|p| json!({"Key": p.key(), "Value": p.value()})).collect::<Vec<_>>()),
           "HttpRequestMethod": c.http_request_method_config().map(|m| strings(m.values())),
           "SourceIp": c.source_ip_config().map(|s| strings(s.values()))})
}

/// A file name for a resource name (letters, digits, `.-_` kept; the rest escaped).
fn file(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c.to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect::<String>()
        + ".json"
}

impl Elb {
    pub fn new(cfg: &AwsConfig) -> Result<Self> {
        let rt = crate::aws::runtime("chunkbak-elb")?;
        let (classic, v2, region) = rt.block_on(async {
            let shared = crate::aws::shared_config(cfg).await;
            let region = shared
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "us-east-1".into());
            let r = aws_config::Region::new(region.clone());
            let mut a = elb::config::Builder::from(&shared).region(r.clone());
            let mut b = elbv2::config::Builder::from(&shared).region(r);
            if let Some(ep) = &cfg.endpoint {
                a = a.endpoint_url(ep.clone());
                b = b.endpoint_url(ep.clone());
            }
            (
                elb::Client::from_conf(a.build()),
                elbv2::Client::from_conf(b.build()),
                region,
            )
        });
        Ok(Elb {
            rt,
            classic,
            v2,
            region,
        })
    }

    pub fn classic_client(&self) -> &elb::Client {
        &self.classic
    }
    pub fn v2_client(&self) -> &elbv2::Client {
        &self.v2
    }
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Every classic load balancer: `classic/NAME.json`.
    pub fn classic_documents(&self) -> Result<Documents> {
        let c = &self.classic;
        self.rt.block_on(async {
            let mut lbs = Vec::new();
            let mut marker = None;
            loop {
                let r = c
                    .describe_load_balancers()
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("describing classic load balancers", elb::error::DisplayErrorContext(&e)))?;
                lbs.extend(r.load_balancer_descriptions().iter().cloned());
                match r.next_marker() {
                    Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                    _ => break,
                }
            }
            let mut out = Documents::new();
            for lb in lbs {
                let name = lb.load_balancer_name().unwrap_or_default().to_string();
                let listeners: Vec<Value> = lb
                    .listener_descriptions()
                    .iter()
                    .filter_map(|d| {
                        let l = d.listener()?;
                        Some(json!({"Protocol": l.protocol(), "LoadBalancerPort": l.load_balancer_port(),
                                    "InstanceProtocol": l.instance_protocol(), "InstancePort": l.instance_port(),
                                    "SSLCertificateId": l.ssl_certificate_id(),
                                    "PolicyNames": strings(d.policy_names())}))
                    })
                    .collect();
                let hc = lb.health_check().map(|h| {
                    json!({"Target": h.target(), "Interval": h.interval(), "Timeout": h.timeout(),
                           "UnhealthyThreshold": h.unhealthy_threshold(), "HealthyThreshold": h.healthy_threshold()})
                });
                let attrs = c
                    .describe_load_balancer_attributes()
                    .load_balancer_name(&name)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("attributes of {name}"), elb::error::DisplayErrorContext(&e)))?;
                let a = attrs.load_balancer_attributes();
                let attributes = a.map(classic_attributes);
                let tags = c
                    .describe_tags()
                    .load_balancer_names(&name)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("tags of {name}"), elb::error::DisplayErrorContext(&e)))?;
                let tags: serde_json::Map<String, Value> = tags
                    .tag_descriptions()
                    .iter()
                    .flat_map(|d| d.tags())
                    .map(|t| (t.key().to_string(), t.value().unwrap_or_default().into()))
                    .collect();
                let mut instances: Vec<String> = lb
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect();
                instances.sort();
                out.push((
                    "classic",
                    file(&name),
                    json!({
                        "LoadBalancerName": name, "DNSName": lb.dns_name(), "Scheme": lb.scheme(),
                        "VPCId": lb.vpc_id(), "Subnets": strings(lb.subnets()),
                        "AvailabilityZones": strings(lb.availability_zones()),
                        "SecurityGroups": strings(lb.security_groups()),
                        "Listeners": listeners, "HealthCheck": hc, "Instances": instances,
                        "Attributes": attributes, "Tags": tags,
                    }),
                ));
            }
            Ok(out)
        })
    }

    /// Every ALB/NLB/GWLB with its listeners and their rules (`load-balancers/NAME.json`) and
    /// every target group (`target-groups/NAME.json`), with attributes and tags.
    pub fn v2_documents(&self) -> Result<Documents> {
        let c = &self.v2;
        self.rt.block_on(async {
            let mut out = Documents::new();
            let mut lbs = Vec::new();
            let mut marker = None;
            loop {
                let r = c
                    .describe_load_balancers()
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(v2_error("describing load balancers".into()))?;
                lbs.extend(r.load_balancers().iter().cloned());
                match r.next_marker() {
                    Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                    _ => break,
                }
            }
            let tags_of = |arn: String| async move {
                let t = c
                    .describe_tags()
                    .resource_arns(&arn)
                    .send()
                    .await
                    .map_err(v2_error(format!("tags of {arn}")))?;
                Ok::<Value, Error>(Value::Object(key_values(
                    t.tag_descriptions()
                        .iter()
                        .flat_map(|d| d.tags())
                        .map(|t| (t.key(), t.value())),
                )))
            };
            let action = |a: &elbv2::types::Action| {
                json!({"Type": a.r#type().map(|t| t.as_str()), "Order": a.order(),
                       "TargetGroupArn": a.target_group_arn(),
                       "Redirect": a.redirect_config().map(|r| json!({"Protocol": r.protocol(), "Port": r.port(),
                            "Host": r.host(), "Path": r.path(), "Query": r.query(),
                            "StatusCode": r.status_code().map(|c| c.as_str())})),
                       "FixedResponse": a.fixed_response_config().map(|f| json!({"StatusCode": f.status_code(),
                            "ContentType": f.content_type(), "MessageBody": f.message_body()})),
                       "Forward": a.forward_config().map(|f| f.target_groups().iter().map(|t|
                            json!({"TargetGroupArn": t.target_group_arn(), "Weight": t.weight()})).collect::<Vec<_>>()),
                       "ForwardStickiness": a.forward_config().and_then(|f| f.target_group_stickiness_config())
                            .map(|s| json!({"Enabled": s.enabled(), "DurationSeconds": s.duration_seconds()}))})
            };
            for lb in lbs {
                let arn = lb.load_balancer_arn().unwrap_or_default().to_string();
                let name = lb.load_balancer_name().unwrap_or_default().to_string();
                let ls = c
                    .describe_listeners()
                    .load_balancer_arn(&arn)
                    .send()
                    .await
                    .map_err(v2_error(format!("listeners of {name}")))?;
                let mut listeners = Vec::new();
                for l in ls.listeners() {
                    let larn = l.listener_arn().unwrap_or_default().to_string();
                    let rs = c
                        .describe_rules()
                        .listener_arn(&larn)
                        .send()
                        .await
                        .map_err(v2_error(format!("rules of {larn}")))?;
                    let mut rules: Vec<Value> = rs
                        .rules()
                        .iter()
                        .map(|r| {
                            json!({"Priority": r.priority(), "IsDefault": r.is_default(),
                                   "Conditions": r.conditions().iter().map(condition).collect::<Vec<_>>(),
                                   "Actions": r.actions().iter().map(action).collect::<Vec<_>>()})
                        })
                        .collect();
                    rules.sort_by_key(|r| r["Priority"].as_str().unwrap_or_default().to_string());
                    listeners.push(json!({
                        "Port": l.port(), "Protocol": l.protocol().map(|p| p.as_str()), "SslPolicy": l.ssl_policy(),
                        "Certificates": l.certificates().iter().map(|c| c.certificate_arn()).collect::<Vec<_>>(),
                        "DefaultActions": l.default_actions().iter().map(action).collect::<Vec<_>>(),
                        "Rules": rules,
                    }));
                }
                listeners.sort_by_key(|l| l["Port"].as_i64());
                let attrs = c
                    .describe_load_balancer_attributes()
                    .load_balancer_arn(&arn)
                    .send()
                    .await
                    .map_err(v2_error(format!("attributes of {name}")))?;
                let attributes = key_values(attrs.attributes().iter().map(|a| (a.key(), a.value())));
                let mut azs: Vec<Value> = lb
                    .availability_zones()
                    .iter()
                    .map(|z| json!({"ZoneName": z.zone_name(), "SubnetId": z.subnet_id()}))
                    .collect();
                azs.sort_by_key(|z| z["ZoneName"].as_str().unwrap_or_default().to_string());
                out.push((
                    "load-balancers",
                    file(&name),
                    json!({
                        "LoadBalancerName": name, "LoadBalancerArn": arn, "Type": lb.r#type().map(|t| t.as_str()),
                        "Scheme": lb.scheme().map(|s| s.as_str()), "VpcId": lb.vpc_id(),
                        "IpAddressType": lb.ip_address_type().map(|t| t.as_str()),
                        "DNSName": lb.dns_name(), "CanonicalHostedZoneId": lb.canonical_hosted_zone_id(),
                        "AvailabilityZones": azs, "SecurityGroups": strings(lb.security_groups()),
                        "Listeners": listeners, "Attributes": attributes, "Tags": tags_of(arn.clone()).await?,
                    }),
                ));
            }
            let mut marker = None;
            loop {
                let r = c
                    .describe_target_groups()
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(v2_error("describing target groups".into()))?;
                for t in r.target_groups() {
                    let arn = t.target_group_arn().unwrap_or_default().to_string();
                    let name = t.target_group_name().unwrap_or_default().to_string();
                    let attrs = c
                        .describe_target_group_attributes()
                        .target_group_arn(&arn)
                        .send()
                        .await
                        .map_err(v2_error(format!("attributes of {name}")))?;
                    let attributes =
                        key_values(attrs.attributes().iter().map(|a| (a.key(), a.value())));
                    out.push((
                        "target-groups",
                        file(&name),
                        json!({
                            "TargetGroupName": name, "TargetGroupArn": arn,
                            "Protocol": t.protocol().map(|p| p.as_str()), "Port": t.port(), "VpcId": t.vpc_id(),
                            "TargetType": t.target_type().map(|p| p.as_str()),
                            "HealthCheck": {"Protocol": t.health_check_protocol().map(|p| p.as_str()),
                                "Port": t.health_check_port(), "Path": t.health_check_path(),
                                "IntervalSeconds": t.health_check_interval_seconds(),
                                "TimeoutSeconds": t.health_check_timeout_seconds(),
                                "HealthyThresholdCount": t.healthy_threshold_count(),
                                "UnhealthyThresholdCount": t.unhealthy_threshold_count(),
                                "Matcher": t.matcher().map(|m| json!({"HttpCode": m.http_code(), "GrpcCode": m.grpc_code()}))},
                            "Attributes": attributes, "Tags": tags_of(arn.clone()).await?,
                        }),
                    ));
                }
                match r.next_marker() {
                    Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                    _ => break,
                }
            }
            Ok(out)
        })
    }
}
