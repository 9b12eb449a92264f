"""Open-loop HTTP load generator (asyncio + httpx) and user-shaped workloads for the gateway and its peers."""
