//! The node's VXLAN device over rtnetlink: external (collect_md) mode, so one device
//! serves every peer and the BPF programs set the tunnel key per packet; no learning
//! and no ARP, since peers are found through the nodes map.

use rtnetlink::{
    LinkMessageBuilder, LinkUnspec, LinkVxlan,
    packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
};
use tracing::info;

use super::{Netlink, Result, nl_err};

/// The settings of a VXLAN device that decide whether it can be kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanSettings {
    /// External (collect_md) mode.
    pub external: bool,
    /// The UDP destination port.
    pub port: Option<u16>,
}

impl VxlanSettings {
    /// `None` if the link is not a VXLAN device.
    fn from_message(msg: &LinkMessage) -> Option<Self> {
        let infos = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })?;
        if !infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))) {
            return None;
        }
        let mut settings = Self::default();
        for info in infos {
            if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                for d in data {
                    match d {
                        InfoVxlan::CollectMetadata(on) => settings.external = *on,
                        InfoVxlan::Port(port) => settings.port = Some(*port),
                        _ => {}
                    }
                }
            }
        }
        Some(settings)
    }
}

impl Netlink {
    /// The VXLAN settings of interface `name`: `None` if there is no such interface,
    /// `Some(None)` if it is not a VXLAN device.
    pub fn vxlan_settings(&self, name: &str) -> Result<Option<Option<VxlanSettings>>> {
        Ok(self.link_message(name)?.map(|msg| VxlanSettings::from_message(&msg)))
    }

    /// Makes `name` an external VXLAN device on UDP `port` with `mtu`, ARP off and up,
    /// and returns its index. A device with the right settings is kept (a restarted
    /// agent must not interrupt traffic); anything else of that name is replaced.
    pub fn ensure_vxlan(&self, name: &str, port: u16, mtu: u32) -> Result<u32> {
        let wanted = VxlanSettings { external: true, port: Some(port) };
        match self.vxlan_settings(name)? {
            Some(Some(current)) if current == wanted => {}
            existing => {
                if existing.is_some() {
                    info!(device = name, "replacing a device with other settings");
                    self.delete_link(name)?;
                } else {
                    info!(device = name, port, "creating the VXLAN device");
                }
                let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                    .collect_metadata(true)
                    .port(port)
                    .learning(false)
                    .build();
                self.rt
                    .block_on(self.handle.link().add(msg).execute())
                    .map_err(nl_err(format!("creating the VXLAN device {name}")))?;
            }
        }
        let index = self.require_link(name)?.index;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).arp(false).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl_err(format!("setting {name} up with mtu {mtu} and ARP off")))?;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_settings_that_decide_keeping_a_device() {
        let msg = LinkMessageBuilder::<LinkVxlan>::new("skiff-vxlan").collect_metadata(true).port(8472).build();
        assert_eq!(VxlanSettings::from_message(&msg), Some(VxlanSettings { external: true, port: Some(8472) }));
        let plain = LinkMessageBuilder::<LinkVxlan>::new("v").port(4789).build();
        assert_eq!(VxlanSettings::from_message(&plain), Some(VxlanSettings { external: false, port: Some(4789) }));
        let not_vxlan = LinkUnspec::new_with_name("eth0").build();
        assert_eq!(VxlanSettings::from_message(&not_vxlan), None);
    }
}
