#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    saga_runtime::service::service_main(saga_orchestrator::Orchestrator::default(), &saga_orchestrator::MIGRATIONS).await
}
