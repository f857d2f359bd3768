/// mimalloc rather than the system allocator: many threads allocate small objects per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(async |_, _| Ok(saga_order::OrderHandler), &saga_order::MIGRATIONS, Ok).await
}
