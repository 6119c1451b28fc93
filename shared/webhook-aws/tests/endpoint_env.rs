//! `AWS_ENDPOINT_URL=""`, as template.yaml declares it for SAM local, means unset: the SDK's own
//! endpoints, not "" (which the SDK would hand every client as its endpoint). Its own test
//! binary: it changes the process environment.

use aws_types::service_config::ServiceConfigKey;

fn sqs_endpoint(sdk: &aws_config::SdkConfig) -> Option<String> {
    let key = ServiceConfigKey::builder()
        .service_id("SQS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .unwrap();
    sdk.service_config()
        .expect("aws-config sets a service config")
        .load_config(key)
}

#[tokio::test]
async fn an_empty_aws_endpoint_url_is_unset_and_a_set_one_is_used() {
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_ENDPOINT_URL", "");
    }
    let sdk = webhook_aws::aws_config().await.unwrap();
    assert_eq!(sqs_endpoint(&sdk), None);
    assert_eq!(sdk.endpoint_url(), None);

    unsafe { std::env::set_var("AWS_ENDPOINT_URL", "  ") };
    let sdk = webhook_aws::aws_config().await.unwrap();
    assert_eq!(sqs_endpoint(&sdk), None);

    unsafe { std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:5000") };
    let sdk = webhook_aws::aws_config().await.unwrap();
    assert_eq!(sqs_endpoint(&sdk).as_deref(), Some("http://127.0.0.1:5000"));
}
