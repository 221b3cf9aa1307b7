//! Who may use the daemon, pure: the socket's peer (its uid from `SO_PEERCRED`, which the kernel
//! fills in and the peer cannot forge) must be root, the daemon's own user, or the one user the
//! configuration names (`socket_user`: the agent's). The socket file itself is that user's with
//! `socket_mode` (0600): nobody else can even connect; the peer check holds when the mode is
//! loosened by mistake.

/// The users allowed to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub own_uid: u32,
    pub user_uid: Option<u32>,
}

impl Access {
    pub fn permits(&self, peer_uid: u32) -> bool {
        peer_uid == 0 || peer_uid == self.own_uid || Some(peer_uid) == self.user_uid
    }
}

/// `user` (a name, or a numeric uid) in `/etc/passwd`'s text: its uid and primary gid. A numeric
/// uid that has no entry is taken as is, with gid = uid.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (name, uid, gid) = (f.first()?, f.get(2)?, f.get(3)?);
        let ids = (uid.parse().ok()?, gid.parse().ok()?);
        (*name == user || *uid == user).then_some(ids)
    });
    entry.or_else(|| user.parse().ok().map(|u| (u, u)))
}

/// Whether one more connection may be served while `open` are.
pub fn admits(open: usize, max: usize) -> bool {
    open < max
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          mosquitto:x:101:101:mosquitto:/var/lib/betaas/mosquitto:/bin/false\n\
                          betaas:x:102:103::/var/lib/betaas:/bin/false\n\
                          broken:x:notanumber:1::/:/bin/false\n";

    #[test]
    fn root_the_daemon_and_the_named_user_only() {
        let a = Access {
            own_uid: 0,
            user_uid: Some(102),
        };
        assert!(a.permits(0));
        assert!(a.permits(102));
        assert!(!a.permits(101));
        assert!(!a.permits(65534));
        let alone = Access {
            own_uid: 500,
            user_uid: None,
        };
        assert!(alone.permits(500) && alone.permits(0));
        assert!(!alone.permits(102));
    }

    #[test]
    fn users_by_name_or_uid() {
        assert_eq!(lookup_user(PASSWD, "betaas"), Some((102, 103)));
        assert_eq!(lookup_user(PASSWD, "102"), Some((102, 103)));
        assert_eq!(lookup_user(PASSWD, "4242"), Some((4242, 4242)));
        assert_eq!(lookup_user(PASSWD, "nobody"), None);
        assert_eq!(lookup_user(PASSWD, "broken"), None);
        assert_eq!(lookup_user("", "root"), None);
    }

    #[test]
    fn connections_are_bounded() {
        assert!(admits(0, 1));
        assert!(!admits(1, 1));
        assert!(!admits(9, 8));
    }
}
