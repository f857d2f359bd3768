#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(saga_orchestrator::Orchestrator::default(), &saga_orchestrator::MIGRATIONS).await
}
