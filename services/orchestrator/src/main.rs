/// mimalloc rather than the system allocator: many threads allocate small objects per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main_with(
        async |settings, saga: saga_orchestrator::SagaSettings, db| {
            let orchestrator = saga_orchestrator::Orchestrator::configured(settings, &saga)?;
            orchestrator.check_in_flight(db).await?;
            Ok(orchestrator)
        },
        &saga_orchestrator::MIGRATIONS,
        saga_orchestrator::Orchestrator::capabilities,
    )
    .await
}
