/// mimalloc rather than the system allocator: many threads allocate small objects per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(
        async |settings, _| Ok(saga_orchestrator::Orchestrator::configured(settings)),
        &saga_orchestrator::MIGRATIONS,
        saga_orchestrator::Orchestrator::capabilities,
    )
    .await
}
