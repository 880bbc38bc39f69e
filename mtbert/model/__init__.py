"""The model, part of the pure core: the BERT encoder (`bert`), the task heads (`heads`) and the
multitask model over them (`multitask`), loading pretrained and trained weights (`load_hf`,
`trained`), the MLM head (`mlm`), the Hugging Face export (`export_hf`) and int8 quantization
(`quantize`)."""
