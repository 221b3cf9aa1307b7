################################################################################
#
# betaas-agent
#
################################################################################

# The source is the repository that holds this external tree (its Cargo
# workspace root); Buildroot rsyncs it into $(BUILD_DIR)/betaas-agent-custom.
BETAAS_AGENT_SITE = $(BR2_EXTERNAL_BETAAS_PATH)/..
BETAAS_AGENT_SITE_METHOD = local
BETAAS_AGENT_LICENSE = Apache-2.0

# Keep the host build outputs out of the copy. .cargo/ is excluded on
# purpose: the repository's .cargo/config.toml is for the offline image
# (Debian's arm-linux-gnueabihf-gcc, +crt-static); here Buildroot's
# toolchain links the agent dynamically against the target C library.
BETAAS_AGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /out --exclude /dl --exclude /.cargo \
	--exclude /agent/fuzz/target --exclude /agent/fuzz/corpus \
	--exclude /buildroot/output

# The crate is a member of the workspace at the repository root.
BETAAS_AGENT_SUBDIR = agent

# Buildroot's cargo infrastructure vendors dependencies only in the
# download step, which a 'local' package skips; and it builds with
# --offline. So fetch the crates of Cargo.lock into Buildroot's cargo
# home (in DL_DIR, shared with the other cargo packages) before the
# build: this is the one step that needs the network.
define BETAAS_AGENT_CARGO_FETCH
	mkdir -p $(BR_CARGO_HOME)
	cd $(@D) && \
	$(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo fetch --locked --manifest-path Cargo.toml
endef
BETAAS_AGENT_PRE_CONFIGURE_HOOKS += BETAAS_AGENT_CARGO_FETCH

# The workspace's release profile favours size (opt-level "z", fat LTO,
# one codegen unit, panic=abort, strip); Buildroot's environment
# overrides profile settings, so restore the size-relevant ones here.
BETAAS_AGENT_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL="z" \
	CARGO_PROFILE_RELEASE_LTO="true" \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS="1"

BETAAS_AGENT_CARGO_BUILD_OPTS = -p betaas-agent --bin betaas-agent

$(eval $(cargo-package))
