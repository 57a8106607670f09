"""iot-assets: IoT device inventory, anomalies and drift from IPFIX flow records."""
