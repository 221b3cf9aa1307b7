include $(sort $(wildcard $(BR2_EXTERNAL_BETAAS_PATH)/package/*/*.mk))
