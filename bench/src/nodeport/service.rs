//! The one Service every target serves, described once: the objects given
//! to the API server (switchyard reads them) and kube-proxy's rules
//! ([`super::iptables`]) are both rendered from [`NodePortService`], so the
//! two datapaths are asked for the very same thing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_tests::objects;
use switchyard_tests::topology::POD_HTTP_PORT;

/// The NodePort measured.
pub const NODE_PORT: u16 = 30080;

/// A NodePort Service with one endpoint, on another node than the one the
/// client connects to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePortService {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name.
    pub port_name: String,
    /// The cluster IP (given, not allocated, so the rules can name it).
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The node port.
    pub node_port: u16,
    /// The only endpoint: the pod on the other node.
    pub endpoint: SocketAddr,
    /// That pod's name (what it answers), and its node's name.
    pub pod_name: String,
    /// The node the pod runs on (`node-<i>`).
    pub pod_node: String,
    /// The label that selects the pod.
    pub app: String,
}

impl NodePortService {
    /// `default/web:http`, cluster IP 10.96.0.10:80, node port 30080, one
    /// endpoint at `pod_ip:8080` named `pod_name` on `pod_node`.
    pub fn web(pod_ip: Ipv4Addr, pod_name: &str, pod_node: &str) -> Self {
        Self {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
            port_name: "http".to_owned(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            node_port: NODE_PORT,
            endpoint: SocketAddr::new(IpAddr::V4(pod_ip), POD_HTTP_PORT),
            pod_name: pod_name.to_owned(),
            pod_node: pod_node.to_owned(),
            app: "web".to_owned(),
        }
    }

    /// kube-proxy's `ServicePortName` string, `namespace/name:port`.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// The Service object: type NodePort, the given cluster IP and node
    /// port, `externalTrafficPolicy: Cluster` (the default), selecting
    /// `app=<app>`.
    pub fn service_object(&self) -> Value {
        let mut value = objects::Service::new(&self.name)
            .namespace(&self.namespace)
            .cluster_ips(&[&self.cluster_ip.to_string()])
            .selector("app", &self.app)
            .port(objects::ServicePort::tcp(
                &self.port_name,
                self.port,
                self.endpoint.port(),
            ))
            .to_value();
        value["spec"]["type"] = json!("NodePort");
        value["spec"]["externalTrafficPolicy"] = json!("Cluster");
        value["spec"]["ports"][0]["nodePort"] = json!(self.node_port);
        value
    }

    /// The Pod object of the endpoint: ready, on its node, IPv4 only.
    pub fn pod_object(&self) -> Value {
        objects::Pod::new(&self.pod_name)
            .namespace(&self.namespace)
            .node(Some(&self.pod_node))
            .ips(&[self.endpoint.ip()])
            .label("app", &self.app)
            .port(&self.port_name, self.endpoint.port())
            .to_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_object_is_a_nodeport_with_the_given_port() {
        let svc = NodePortService::web(Ipv4Addr::new(10, 244, 1, 10), "web-1-0", "node-1");
        let value = svc.service_object();
        assert_eq!(value["spec"]["type"], "NodePort");
        assert_eq!(value["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(value["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(value["spec"]["ports"][0]["port"], 80);
        assert_eq!(value["spec"]["selector"]["app"], "web");
        let pod = svc.pod_object();
        assert_eq!(pod["spec"]["nodeName"], "node-1");
        assert_eq!(pod["status"]["podIP"], "10.244.1.10");
        assert_eq!(svc.port_name_string(), "default/web:http");
    }
}
