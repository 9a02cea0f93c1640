//! `aws-apply elb`'s second step: what the plan says is missing, created through the
//! Elastic Load Balancing APIs from the (id-mapped) documents.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_elasticloadbalancing as classic;
use aws_sdk_elasticloadbalancingv2 as v2;
use serde_json::Value;

use super::{has_auth, s, strs, ElbPlan};
use crate::elb::Elb;
use crate::elb::{classic_error, v2_error};
use crate::error::{Error, Result};

/// A load balancer the apply created or found: name, DNS name, hosted zone (for the alias
/// records that point at it).
#[derive(Debug, Clone)]
pub struct Created {
    pub name: String,
    pub dns_name: String,
    pub hosted_zone: String,
    pub existed: bool,
}

/// What an apply did.
#[derive(Debug, Default, Clone)]
pub struct ElbApplied {
    /// Resources created (target groups, load balancers, listeners, rules).
    pub created: u64,
    /// Requests that changed something.
    pub requests: u64,
    pub load_balancers: Vec<Created>,
}

fn opt_i32(v: &Value) -> Option<i32> {
    v.as_i64().and_then(|n| i32::try_from(n).ok())
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn v2_tags(v: &Value) -> Option<Vec<v2::types::Tag>> {
    let t: Vec<_> = v
        .as_object()?
        .iter()
        .map(|(k, x)| {
            v2::types::Tag::builder()
                .key(k)
                .value(x.as_str().unwrap_or_default())
                .build()
        })
        .collect();
    (!t.is_empty()).then_some(t)
}

/// An action of a document, forwarding to the target groups of the target region (by name).
fn action(a: &Value, tg: &dyn Fn(&str) -> Result<String>) -> Result<v2::types::Action> {
    use v2::types::*;
    let mut b = Action::builder()
        .r#type(ActionTypeEnum::from(s(a, "Type").as_str()))
        .set_order(opt_i32(&a["Order"]));
    if let Some(arn) = a["TargetGroupArn"].as_str() {
        b = b.target_group_arn(tg(arn)?);
    }
    if let Some(r) = a["Redirect"].as_object() {
        let r = Value::Object(r.clone());
        b = b.redirect_config(
            RedirectActionConfig::builder()
                .set_protocol(opt_str(&r["Protocol"]))
                .set_port(opt_str(&r["Port"]))
                .set_host(opt_str(&r["Host"]))
                .set_path(opt_str(&r["Path"]))
                .set_query(opt_str(&r["Query"]))
                .status_code(RedirectActionStatusCodeEnum::from(
                    s(&r, "StatusCode").as_str(),
                ))
                .build(),
        );
    }
    if let Some(f) = a["FixedResponse"].as_object() {
        let f = Value::Object(f.clone());
        b = b.fixed_response_config(
            FixedResponseActionConfig::builder()
                .set_status_code(opt_str(&f["StatusCode"]))
                .set_content_type(opt_str(&f["ContentType"]))
                .set_message_body(opt_str(&f["MessageBody"]))
                .build(),
        );
    }
    if let Some(groups) = a["Forward"].as_array() {
        let mut f = ForwardActionConfig::builder();
        for t in groups {
            f = f.target_groups(
                TargetGroupTuple::builder()
                    .target_group_arn(tg(&s(t, "TargetGroupArn"))?)
                    .set_weight(opt_i32(&t["Weight"]))
                    .build(),
            );
        }
        if let Some(st) = a["ForwardStickiness"].as_object() {
            f = f.target_group_stickiness_config(
                TargetGroupStickinessConfig::builder()
                    .set_enabled(st.get("Enabled").and_then(Value::as_bool))
                    .set_duration_seconds(st.get("DurationSeconds").and_then(opt_i32))
                    .build(),
            );
        }
        b = b.forward_config(f.build());
    }
    Ok(b.build())
}

fn condition(c: &Value) -> v2::types::RuleCondition {
    use v2::types::*;
    let mut b = RuleCondition::builder().field(s(c, "Field"));
    let values = strs(&c["Values"]);
    if !values.is_empty() {
        b = b.set_values(Some(values));
    }
    if let Some(h) = c["HttpHeader"].as_object() {
        b = b.http_header_config(
            HttpHeaderConditionConfig::builder()
                .set_http_header_name(h.get("Name").and_then(Value::as_str).map(str::to_string))
                .set_values(Some(strs(&c["HttpHeader"]["Values"])))
                .build(),
        );
    }
    if let Some(q) = c["QueryString"].as_array() {
        let mut qb = QueryStringConditionConfig::builder();
        for p in q {
            qb = qb.values(
                QueryStringKeyValuePair::builder()
                    .set_key(opt_str(&p["Key"]))
                    .set_value(opt_str(&p["Value"]))
                    .build(),
            );
        }
        b = b.query_string_config(qb.build());
    }
    if c["HttpRequestMethod"].is_array() {
        b = b.http_request_method_config(
            HttpRequestMethodConditionConfig::builder()
                .set_values(Some(strs(&c["HttpRequestMethod"])))
                .build(),
        );
    }
    if c["SourceIp"].is_array() {
        b = b.source_ip_config(
            SourceIpConditionConfig::builder()
                .set_values(Some(strs(&c["SourceIp"])))
                .build(),
        );
    }
    b.build()
}

/// The attributes of `want` whose value differs from `now` (a created resource's defaults).
fn changed_attributes<'a>(
    want: &Value,
    now: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Vec<(String, String)> {
    let now: BTreeMap<&str, &str> = now
        .map(|(k, v)| (k.unwrap_or_default(), v.unwrap_or_default()))
        .collect();
    want.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            (now.get(k.as_str()) != Some(&v)).then(|| (k.clone(), v.to_string()))
        })
        .collect()
}

/// Creates what the plan says is missing. Refuses a plan into another region with unmapped
/// ids.
pub fn apply_elb(plan: &ElbPlan, elb: &Elb) -> Result<ElbApplied> {
    if plan.blocked() {
        return Err(Error::Invalid(format!(
            "{}: {}",
            plan.unmapped_error(),
            plan.unmapped.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut done = ElbApplied::default();
    let c = elb.v2_client();
    let src = &plan.src;
    elb.block_on(async {
        use v2::types::*;
        // Target groups: old ARN → new ARN.
        let mut tg_arns: BTreeMap<String, String> = BTreeMap::new();
        for t in &src.target_groups {
            let name = s(t, "TargetGroupName");
            let arn = match plan.existing.target_groups.get(&name) {
                Some(a) => a.clone(),
                None => {
                    let h = &t["HealthCheck"];
                    let r = c
                        .create_target_group()
                        .name(&name)
                        .set_protocol(
                            opt_str(&t["Protocol"]).map(|p| ProtocolEnum::from(p.as_str())),
                        )
                        .set_port(opt_i32(&t["Port"]))
                        .set_vpc_id(opt_str(&t["VpcId"]))
                        .set_target_type(
                            opt_str(&t["TargetType"]).map(|p| TargetTypeEnum::from(p.as_str())),
                        )
                        .set_health_check_protocol(
                            opt_str(&h["Protocol"]).map(|p| ProtocolEnum::from(p.as_str())),
                        )
                        .set_health_check_port(opt_str(&h["Port"]))
                        .set_health_check_path(opt_str(&h["Path"]))
                        .set_health_check_interval_seconds(opt_i32(&h["IntervalSeconds"]))
                        .set_health_check_timeout_seconds(opt_i32(&h["TimeoutSeconds"]))
                        .set_healthy_threshold_count(opt_i32(&h["HealthyThresholdCount"]))
                        .set_unhealthy_threshold_count(opt_i32(&h["UnhealthyThresholdCount"]))
                        .set_matcher(h["Matcher"].as_object().map(|m| {
                            Matcher::builder()
                                .set_http_code(m.get("HttpCode").and_then(opt_str))
                                .set_grpc_code(m.get("GrpcCode").and_then(opt_str))
                                .build()
                        }))
                        .set_tags(v2_tags(&t["Tags"]))
                        .send()
                        .await
                        .map_err(v2_error(format!("creating target group {name}")))?;
                    done.requests += 1;
                    done.created += 1;
                    let arn = r
                        .target_groups()
                        .first()
                        .and_then(|t| t.target_group_arn())
                        .unwrap_or_default()
                        .to_string();
                    let now = c
                        .describe_target_group_attributes()
                        .target_group_arn(&arn)
                        .send()
                        .await
                        .map_err(v2_error(format!("attributes of target group {name}")))?;
                    let set = changed_attributes(
                        &t["Attributes"],
                        now.attributes().iter().map(|a| (a.key(), a.value())),
                    );
                    if !set.is_empty() {
                        c.modify_target_group_attributes()
                            .target_group_arn(&arn)
                            .set_attributes(Some(
                                set.into_iter()
                                    .map(|(k, v)| {
                                        TargetGroupAttribute::builder().key(k).value(v).build()
                                    })
                                    .collect(),
                            ))
                            .send()
                            .await
                            .map_err(v2_error(format!("attributes of target group {name}")))?;
                        done.requests += 1;
                    }
                    arn
                }
            };
            tg_arns.insert(s(t, "TargetGroupArn"), arn);
        }
        let tg = |old: &str| -> Result<String> {
            tg_arns.get(old).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "an action forwards to target group {old}, which the snapshot does not hold"
                ))
            })
        };
        for lb in &src.load_balancers {
            let name = s(lb, "LoadBalancerName");
            let existed = plan.existing.load_balancers.get(&name);
            let (arn, ports) = match existed {
                Some((arn, ports)) => (arn.clone(), ports.clone()),
                None => {
                    let subnets: Vec<String> = lb["AvailabilityZones"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|z| opt_str(&z["SubnetId"]))
                        .collect();
                    let groups = strs(&lb["SecurityGroups"]);
                    let r = c
                        .create_load_balancer()
                        .name(&name)
                        .set_subnets(Some(subnets))
                        .set_security_groups((!groups.is_empty()).then_some(groups))
                        .set_scheme(
                            opt_str(&lb["Scheme"])
                                .map(|x| LoadBalancerSchemeEnum::from(x.as_str())),
                        )
                        .set_type(
                            opt_str(&lb["Type"]).map(|x| LoadBalancerTypeEnum::from(x.as_str())),
                        )
                        .set_ip_address_type(
                            opt_str(&lb["IpAddressType"]).map(|x| IpAddressType::from(x.as_str())),
                        )
                        .set_tags(v2_tags(&lb["Tags"]))
                        .send()
                        .await
                        .map_err(v2_error(format!("creating load balancer {name}")))?;
                    done.requests += 1;
                    done.created += 1;
                    let arn = r
                        .load_balancers()
                        .first()
                        .and_then(|l| l.load_balancer_arn())
                        .unwrap_or_default()
                        .to_string();
                    let now = c
                        .describe_load_balancer_attributes()
                        .load_balancer_arn(&arn)
                        .send()
                        .await
                        .map_err(v2_error(format!("attributes of {name}")))?;
                    let set = changed_attributes(
                        &lb["Attributes"],
                        now.attributes().iter().map(|a| (a.key(), a.value())),
                    );
                    if !set.is_empty() {
                        c.modify_load_balancer_attributes()
                            .load_balancer_arn(&arn)
                            .set_attributes(Some(
                                set.into_iter()
                                    .map(|(k, v)| {
                                        LoadBalancerAttribute::builder().key(k).value(v).build()
                                    })
                                    .collect(),
                            ))
                            .send()
                            .await
                            .map_err(v2_error(format!("attributes of {name}")))?;
                        done.requests += 1;
                    }
                    (arn, BTreeSet::new())
                }
            };
            for l in lb["Listeners"].as_array().into_iter().flatten() {
                let port = l["Port"].as_i64().unwrap_or_default();
                if ports.contains(&port) || has_auth(&l["DefaultActions"]) {
                    continue;
                }
                let defaults = l["DefaultActions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| action(a, &tg))
                    .collect::<Result<Vec<_>>>()?;
                let certs: Vec<Certificate> = strs(&l["Certificates"])
                    .into_iter()
                    .map(|a| Certificate::builder().certificate_arn(a).build())
                    .collect();
                let r = c
                    .create_listener()
                    .load_balancer_arn(&arn)
                    .set_port(opt_i32(&l["Port"]))
                    .set_protocol(opt_str(&l["Protocol"]).map(|p| ProtocolEnum::from(p.as_str())))
                    .set_ssl_policy(opt_str(&l["SslPolicy"]))
                    .set_certificates((!certs.is_empty()).then_some(certs))
                    .set_default_actions(Some(defaults))
                    .send()
                    .await
                    .map_err(v2_error(format!("creating listener {name}:{port}")))?;
                done.requests += 1;
                done.created += 1;
                let larn = r
                    .listeners()
                    .first()
                    .and_then(|l| l.listener_arn())
                    .unwrap_or_default()
                    .to_string();
                let mut rules: Vec<&Value> = l["Rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["IsDefault"].as_bool() != Some(true) && !has_auth(&r["Actions"]))
                    .collect();
                rules.sort_by_key(|r| s(r, "Priority").parse::<i32>().unwrap_or(i32::MAX));
                for rule in rules {
                    let prio = s(rule, "Priority");
                    let actions = rule["Actions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| action(a, &tg))
                        .collect::<Result<Vec<_>>>()?;
                    c.create_rule()
                        .listener_arn(&larn)
                        .set_priority(prio.parse().ok())
                        .set_conditions(Some(
                            rule["Conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(condition)
                                .collect(),
                        ))
                        .set_actions(Some(actions))
                        .send()
                        .await
                        .map_err(v2_error(format!(
                            "creating rule {name}:{port} priority {prio}"
                        )))?;
                    done.requests += 1;
                    done.created += 1;
                }
            }
            let r = c
                .describe_load_balancers()
                .load_balancer_arns(&arn)
                .send()
                .await
                .map_err(v2_error(format!("describing load balancer {name}")))?;
            let l = r.load_balancers().first();
            done.load_balancers.push(Created {
                name,
                dns_name: l.and_then(|l| l.dns_name()).unwrap_or_default().into(),
                hosted_zone: l
                    .and_then(|l| l.canonical_hosted_zone_id())
                    .unwrap_or_default()
                    .into(),
                existed: existed.is_some(),
            });
        }
        Ok::<(), Error>(())
    })?;
    apply_classic(plan, elb, &mut done)?;
    Ok(done)
}

fn apply_classic(plan: &ElbPlan, elb: &Elb, done: &mut ElbApplied) -> Result<()> {
    use classic::types::*;
    let c = elb.classic_client();
    let build = |what: &str, e: classic::error::BuildError| {
        Error::Invalid(format!("classic load balancer document: {what}: {e}"))
    };
    elb.block_on(async {
        for d in &plan.src.classic {
            let name = s(d, "LoadBalancerName");
            if plan.existing.classic.contains(&name) {
                done.load_balancers.push(Created {
                    dns_name: String::new(),
                    hosted_zone: String::new(),
                    existed: true,
                    name,
                });
                continue;
            }
            let mut listeners = Vec::new();
            for l in d["Listeners"].as_array().into_iter().flatten() {
                listeners.push(
                    Listener::builder()
                        .set_protocol(opt_str(&l["Protocol"]))
                        .set_load_balancer_port(opt_i32(&l["LoadBalancerPort"]))
                        .set_instance_protocol(opt_str(&l["InstanceProtocol"]))
                        .set_instance_port(opt_i32(&l["InstancePort"]))
                        .set_ssl_certificate_id(opt_str(&l["SSLCertificateId"]))
                        .build()
                        .map_err(|e| build(&name, e))?,
                );
            }
            let subnets = strs(&d["Subnets"]);
            let groups = strs(&d["SecurityGroups"]);
            let tags = d["Tags"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    Tag::builder()
                        .key(k)
                        .value(v.as_str().unwrap_or_default())
                        .build()
                        .map_err(|e| build(&name, e))
                })
                .collect::<Result<Vec<_>>>()?;
            let r = c
                .create_load_balancer()
                .load_balancer_name(&name)
                .set_listeners(Some(listeners))
                .set_availability_zones(subnets.is_empty().then(|| strs(&d["AvailabilityZones"])))
                .set_subnets((!subnets.is_empty()).then_some(subnets))
                .set_security_groups((!groups.is_empty()).then_some(groups))
                .set_scheme((s(d, "Scheme") == "internal").then(|| "internal".to_string()))
                .set_tags((!tags.is_empty()).then_some(tags))
                .send()
                .await
                .map_err(classic_error(format!(
                    "creating classic load balancer {name}"
                )))?;
            done.requests += 1;
            done.created += 1;
            let h = &d["HealthCheck"];
            if h.is_object() {
                c.configure_health_check()
                    .load_balancer_name(&name)
                    .health_check(
                        HealthCheck::builder()
                            .set_target(opt_str(&h["Target"]))
                            .set_interval(opt_i32(&h["Interval"]))
                            .set_timeout(opt_i32(&h["Timeout"]))
                            .set_unhealthy_threshold(opt_i32(&h["UnhealthyThreshold"]))
                            .set_healthy_threshold(opt_i32(&h["HealthyThreshold"]))
                            .build()
                            .map_err(|e| build(&name, e))?,
                    )
                    .send()
                    .await
                    .map_err(classic_error(format!("health check of {name}")))?;
                done.requests += 1;
            }
            let a = &d["Attributes"];
            let now = c
                .describe_load_balancer_attributes()
                .load_balancer_name(&name)
                .send()
                .await
                .map_err(classic_error(format!("attributes of {name}")))?;
            let now = now
                .load_balancer_attributes()
                .map(crate::elb::classic_attributes)
                .unwrap_or_default();
            // Only what differs from a new load balancer's.
            let differs = |k: &str| a[k] != now[k];
            if [
                "CrossZoneLoadBalancing",
                "ConnectionDraining",
                "ConnectionSettings",
                "AccessLog",
            ]
            .iter()
            .any(|k| differs(k))
            {
                let mut attrs = LoadBalancerAttributes::builder();
                if let Some(b) = a["CrossZoneLoadBalancing"]
                    .as_bool()
                    .filter(|_| differs("CrossZoneLoadBalancing"))
                {
                    attrs = attrs.cross_zone_load_balancing(
                        CrossZoneLoadBalancing::builder().enabled(b).build(),
                    );
                }
                if let Some(b) = a["ConnectionDraining"]["Enabled"]
                    .as_bool()
                    .filter(|_| differs("ConnectionDraining"))
                {
                    attrs = attrs.connection_draining(
                        ConnectionDraining::builder()
                            .enabled(b)
                            .set_timeout(opt_i32(&a["ConnectionDraining"]["Timeout"]))
                            .build(),
                    );
                }
                if let Some(t) = opt_i32(&a["ConnectionSettings"]["IdleTimeout"])
                    .filter(|_| differs("ConnectionSettings"))
                {
                    attrs = attrs.connection_settings(
                        ConnectionSettings::builder()
                            .idle_timeout(t)
                            .build()
                            .map_err(|e| build(&name, e))?,
                    );
                }
                if let Some(b) = a["AccessLog"]["Enabled"]
                    .as_bool()
                    .filter(|_| differs("AccessLog"))
                {
                    let l = &a["AccessLog"];
                    attrs = attrs.access_log(
                        AccessLog::builder()
                            .enabled(b)
                            .set_s3_bucket_name(opt_str(&l["S3BucketName"]))
                            .set_emit_interval(opt_i32(&l["EmitInterval"]))
                            .set_s3_bucket_prefix(opt_str(&l["S3BucketPrefix"]))
                            .build(),
                    );
                }
                c.modify_load_balancer_attributes()
                    .load_balancer_name(&name)
                    .load_balancer_attributes(attrs.build())
                    .send()
                    .await
                    .map_err(classic_error(format!("attributes of {name}")))?;
                done.requests += 1;
            }
            done.load_balancers.push(Created {
                name,
                dns_name: r.dns_name().unwrap_or_default().into(),
                hosted_zone: String::new(),
                existed: false,
            });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_attributes_that_differ_are_sent() {
        let want = json!({"idle_timeout.timeout_seconds": "120", "deletion_protection.enabled": "false",
                          "new.key": "x"});
        let now = [
            (Some("idle_timeout.timeout_seconds"), Some("60")),
            (Some("deletion_protection.enabled"), Some("false")),
        ];
        assert_eq!(
            changed_attributes(&want, now.into_iter()),
            vec![
                (
                    "idle_timeout.timeout_seconds".to_string(),
                    "120".to_string()
                ),
                ("new.key".to_string(), "x".to_string())
            ]
        );
    }
}
