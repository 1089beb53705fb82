"""Client SDKs for other processes, apart from the server: `client.GatewayClient` (an asyncio WebSocket
client that reconnects and resumes) and `publisher.HttpPublisher` / `publisher.RedisPublisher`."""
